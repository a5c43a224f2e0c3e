/**
 * The soak's one table, as aligned plain text for the terminal and as
 * Markdown for the README, and the verdict of a row.
 * @module
 */

import type { Row } from "./common.ts";

/** "pass", "FAIL" or "skipped". */
export function verdict(row: Row): "pass" | "FAIL" | "skipped" {
  if (row.skipped) return "skipped";
  return row.failed === 0 ? "pass" : "FAIL";
}

function failedText(row: Row): string {
  if (row.skipped) return `skipped: ${row.skipped}`;
  if (row.failed === 0) return "none";
  return `${row.failed}: ${row.failures.join("; ")}`;
}

function cells(row: Row): string[] {
  return [row.suite, row.tried, row.count.toLocaleString("en-US"), failedText(row), row.figures];
}

const HEADERS = ["Suite", "What was tried", "How many", "What failed", "Figures"];

/** Word-wraps `text` to `width` columns (a longer word is cut). */
function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = "";
  for (let word of text.split(/\s+/).filter(Boolean)) {
    while (word.length > width) {
      if (line) lines.push(line);
      line = "";
      lines.push(word.slice(0, width));
      word = word.slice(width);
    }
    if (line && line.length + 1 + word.length > width) {
      lines.push(line);
      line = "";
    }
    line = line ? `${line} ${word}` : word;
  }
  if (line || lines.length === 0) lines.push(line);
  return lines;
}

/** The table as aligned text, long cells wrapped. */
export function plainTable(rows: Row[]): string {
  const widths = [7, 46, 10, 30, 56];
  const render = (values: string[]) => {
    const wrapped = values.map((v, i) => wrap(v, widths[i]));
    const height = Math.max(...wrapped.map((w) => w.length));
    const out: string[] = [];
    for (let l = 0; l < height; l++) {
      out.push(wrapped.map((w, i) => (w[l] ?? "").padEnd(widths[i])).join(" | ").trimEnd());
    }
    return out;
  };
  const rule = widths.map((w) => "-".repeat(w)).join("-+-");
  const lines = [...render(HEADERS), rule];
  for (const row of rows) lines.push(...render(cells(row)), rule);
  return lines.join("\n");
}

function escapeCell(text: string): string {
  return text.replace(/\|/g, "\\|").replace(/\n/g, " ");
}

/** The table in Markdown. */
export function markdownTable(rows: Row[]): string {
  const lines = [
    `| ${HEADERS.join(" | ")} |`,
    `| ${HEADERS.map((_, i) => (i === 2 ? "---:" : "---")).join(" | ")} |`,
  ];
  for (const row of rows) lines.push(`| ${cells(row).map(escapeCell).join(" | ")} |`);
  return lines.join("\n");
}
