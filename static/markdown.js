// Safe, incremental Markdown for streamed replies: window.streamchatMarkdown.render(container) -> renderer.
//
// renderer.update(text) shows text (the reply so far); renderer.update(longer) costs what the last block
// costs, not the whole reply: blocks that later text can no longer change are rendered once and kept,
// and only the open block (the last one, with any line still being written) is rendered again.
//
// Safety: every node is built with createElement and textContent; nothing is ever parsed as HTML, so
// "<script>", "<img onerror>" and entities stay text. Links are made only for http:, https: and mailto:
// URLs, opened in a new tab with rel="noopener noreferrer nofollow"; anything else shows its text.
// No images. Supported: paragraphs (a single newline is a line break), ATX headings, **bold**, *italic*,
// `code`, fenced code blocks, - and 1. lists, > quotes, pipe tables, --- rules, [links](https://...).
// Half-received syntax (an open fence, a half link, a lone **) shows as text until the rest arrives.
(function () {
  "use strict";

  const FENCE = /^ {0,3}(`{3,}|~{3,})(.*)$/;
  const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t#]*$/;
  const RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
  const ITEM = /^( {0,3})([-*+]|\d{1,9}[.)])[ \t]+(.*)$/;
  const QUOTE = /^ {0,3}> ?(.*)$/;
  const TABLE_SEPARATOR = /^ {0,3}\|?[ \t]*:?-+:?[ \t]*(\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$/;
  const SAFE_PROTOCOLS = ["http:", "https:", "mailto:"];

  // -- blocks: the text's lines grouped into { type, lines } ------------------------------------------

  function blocksOf(text) {
    const lines = text.split("\n");
    const blocks = [];
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      if (!line.trim()) { i++; continue; }
      const fence = FENCE.exec(line);
      if (fence) {
        const close = new RegExp("^ {0,3}" + fence[1][0] + "{" + fence[1].length + ",}[ \\t]*$");
        let j = i + 1;
        while (j < lines.length && !close.test(lines[j])) j++;
        blocks.push({ type: "code", language: fence[2].trim().split(/\s/)[0] || "", lines: lines.slice(i + 1, j),
                      closed: j < lines.length });
        i = j + 1;
        continue;
      }
      const heading = HEADING.exec(line);
      if (heading) { blocks.push({ type: "heading", level: heading[1].length, lines: [heading[2] || ""] }); i++; continue; }
      if (RULE.test(line)) { blocks.push({ type: "rule", lines: [] }); i++; continue; }
      if (QUOTE.test(line)) {
        const quoted = [];
        while (i < lines.length && QUOTE.test(lines[i])) quoted.push(QUOTE.exec(lines[i++])[1]);
        blocks.push({ type: "quote", lines: quoted });
        continue;
      }
      const item = ITEM.exec(line);
      if (item) {
        const ordered = /\d/.test(item[2]);
        const items = [];
        while (i < lines.length) {
          const next = ITEM.exec(lines[i]);
          if (next && /\d/.test(next[2]) === ordered) {
            items.push({ start: ordered ? parseInt(next[2], 10) : 0, lines: [next[3]] });
            i++;
          } else if (lines[i].trim() && /^[ \t]{2,}\S/.test(lines[i]) && items.length) {
            items[items.length - 1].lines.push(lines[i].trim()); // a continuation line of the item
            i++;
          } else break;
        }
        blocks.push({ type: ordered ? "ol" : "ul", items, lines: [] });
        continue;
      }
      if (line.includes("|") && i + 1 < lines.length && TABLE_SEPARATOR.test(lines[i + 1]) && lines[i + 1].includes("-")) {
        const rows = [line];
        let j = i + 2;
        while (j < lines.length && lines[j].includes("|") && lines[j].trim()) rows.push(lines[j++]);
        blocks.push({ type: "table", lines: rows });
        i = j;
        continue;
      }
      const paragraph = [];
      while (i < lines.length && lines[i].trim() && !startsBlock(lines, i)) paragraph.push(lines[i++]);
      if (!paragraph.length) paragraph.push(lines[i++]);
      blocks.push({ type: "paragraph", lines: paragraph });
    }
    return blocks;
  }

  function startsBlock(lines, i) {
    const line = lines[i];
    return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || ITEM.test(line) ||
      (line.includes("|") && i + 1 < lines.length && TABLE_SEPARATOR.test(lines[i + 1]) && lines[i + 1].includes("-"));
  }

  // -- rendering: DOM nodes only, text only through textContent -------------------------------------

  function el(tag, className) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    return node;
  }

  function renderBlock(block) {
    switch (block.type) {
      case "code": {
        const pre = el("pre");
        const code = el("code");
        code.textContent = block.lines.join("\n");
        if (block.language) pre.dataset.language = block.language;
        pre.append(code);
        return pre;
      }
      case "heading": {
        const heading = el("h" + Math.min(6, block.level + 2)); // h3-h6: the page's own headings come first
        appendInline(heading, block.lines[0]);
        return heading;
      }
      case "rule": return el("hr");
      case "quote": {
        const quote = el("blockquote");
        for (const inner of blocksOf(block.lines.join("\n"))) quote.append(renderBlock(inner));
        return quote;
      }
      case "ul":
      case "ol": {
        const list = el(block.type);
        if (block.type === "ol" && block.items.length && block.items[0].start !== 1) list.start = block.items[0].start;
        for (const item of block.items) {
          const li = el("li");
          appendLines(li, item.lines);
          list.append(li);
        }
        return list;
      }
      case "table": return renderTable(block.lines);
      default: {
        const paragraph = el("p");
        appendLines(paragraph, block.lines);
        return paragraph;
      }
    }
  }

  function renderTable(rows) {
    const table = el("table");
    const cells = (row) => row.trim().replace(/^\|/, "").replace(/\|$/, "").split("|").map((cell) => cell.trim());
    const head = el("thead");
    const headRow = el("tr");
    for (const cell of cells(rows[0])) {
      const th = el("th");
      appendInline(th, cell);
      headRow.append(th);
    }
    head.append(headRow);
    const body = el("tbody");
    for (const row of rows.slice(1)) {
      const tr = el("tr");
      for (const cell of cells(row)) {
        const td = el("td");
        appendInline(td, cell);
        tr.append(td);
      }
      body.append(tr);
    }
    table.append(head, body);
    return table;
  }

  function appendLines(parent, lines) {
    lines.forEach((line, index) => {
      if (index) parent.append(el("br"));
      appendInline(parent, line);
    });
  }

  // Inline syntax, left to right: `code`, **strong**/__strong__, *em*/_em_, [text](url), \-escapes.
  // A delimiter without its closing partner is text.
  function appendInline(parent, text) {
    let plain = "";
    const flush = () => { if (plain) { parent.append(document.createTextNode(plain)); plain = ""; } };
    let i = 0;
    while (i < text.length) {
      const c = text[i];
      if (c === "\\" && i + 1 < text.length && /[\\`*_[\]()#+\-.!|>~]/.test(text[i + 1])) {
        plain += text[i + 1];
        i += 2;
        continue;
      }
      if (c === "`") {
        const run = /^`+/.exec(text.slice(i))[0];
        const end = text.indexOf(run, i + run.length);
        if (end > i) {
          flush();
          const code = el("code");
          code.textContent = text.slice(i + run.length, end).replace(/^ (.+) $/, "$1");
          parent.append(code);
          i = end + run.length;
          continue;
        }
        plain += run;
        i += run.length;
        continue;
      }
      if (c === "*" || c === "_") {
        const double = text[i + 1] === c;
        const mark = double ? c + c : c;
        const end = closing(text, mark, i + mark.length);
        const intraword = c === "_" && /\w/.test(text[i - 1] || "");
        if (end > i + mark.length && !intraword) {
          flush();
          const node = el(double ? "strong" : "em");
          appendInline(node, text.slice(i + mark.length, end));
          parent.append(node);
          i = end + mark.length;
          continue;
        }
      }
      if (c === "[") {
        const link = /^\[([^\]\n]*)\]\(([^()\s]*(?:\([^()\s]*\)[^()\s]*)*)\)/.exec(text.slice(i));
        if (link) {
          flush();
          const href = safeUrl(link[2]);
          if (href) {
            const a = el("a");
            a.href = href;
            a.target = "_blank";
            a.rel = "noopener noreferrer nofollow";
            appendInline(a, link[1] || link[2]);
            parent.append(a);
          } else {
            appendInline(parent, link[1] || link[2]); // an unsafe link keeps its words, loses its target
          }
          i += link[0].length;
          continue;
        }
      }
      plain += c;
      i++;
    }
    flush();
  }

  function closing(text, mark, from) {
    // The next mark that closes: not followed by whitespace on its left side's inside, and not empty.
    let at = text.indexOf(mark, from);
    while (at > from - 1 && at >= 0) {
      if (!/\s/.test(text[at - 1] || " ") && !(mark.length === 1 && text[at + 1] === mark)) return at;
      at = text.indexOf(mark, at + 1);
    }
    return -1;
  }

  function safeUrl(raw) {
    try {
      const url = new URL(raw);
      return SAFE_PROTOCOLS.includes(url.protocol) ? url.href : null;
    } catch (_) {
      return null; // relative or malformed: no link
    }
  }

  // -- the incremental renderer ----------------------------------------------------------------------

  function render(container) {
    let text = "";
    let fixedUpTo = 0; // text before this offset is in blocks that are final, rendered once
    let live = []; // the nodes of the open region (the last block and the line being written)

    function update(full) {
      if (!full.startsWith(text) || full.length < text.length) reset();
      text = full;
      const rest = text.slice(fixedUpTo);
      const complete = rest.slice(0, rest.lastIndexOf("\n") + 1); // whole lines only decide what is final
      const blocks = blocksOf(complete);
      if (blocks.length > 1) {
        // Every block but the last is followed by another one: nothing later can change it.
        const lastStart = startOfLastBlock(complete);
        for (const node of live) node.remove();
        live = [];
        for (const block of blocksOf(complete.slice(0, lastStart))) container.append(renderBlock(block));
        fixedUpTo += lastStart;
      }
      for (const node of live) node.remove();
      live = blocksOf(text.slice(fixedUpTo)).map(renderBlock);
      container.append(...live);
    }

    function reset() {
      container.replaceChildren();
      text = "";
      fixedUpTo = 0;
      live = [];
    }

    return { update, reset };
  }

  // The offset where the last block of ``complete`` (whole lines) starts, walking blocksOf's grouping.
  function startOfLastBlock(complete) {
    const lines = complete.split("\n");
    let offset = 0;
    let i = 0;
    let start = 0;
    for (const block of blocksOf(complete)) {
      while (i < lines.length && !lines[i].trim()) offset += lines[i++].length + 1;
      start = offset;
      for (let k = lineCount(block); k > 0 && i < lines.length; k--) offset += lines[i++].length + 1;
    }
    return start;
  }

  function lineCount(block) {
    switch (block.type) {
      case "code": return block.lines.length + (block.closed ? 2 : 1);
      case "ul": case "ol": return block.items.reduce((n, item) => n + item.lines.length, 0);
      case "rule": return 1;
      case "table": return block.lines.length + 1;
      default: return block.lines.length;
    }
  }

  window.streamchatMarkdown = { render };
})();
