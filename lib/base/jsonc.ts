/**
 * JSON extended with `//` line comments, `/* *\/` block comments and
 * trailing commas in objects and arrays, parsed strictly: a key that appears
 * twice in one object is an error (not the last one winning), nesting is
 * bounded, and every error says where it is.
 *
 * @example
 * ```ts
 * import { parseJsonc } from "./jsonc.ts";
 * parseJsonc('{ "a": [1, 2,], // note\n }'); // { a: [1, 2] }
 * ```
 * @module
 */

/** A parsed JSON value. Objects have no prototype, so `__proto__` is just a key. */
export type JsonValue = null | boolean | number | string | JsonValue[] | JsonObject;
/** A parsed JSON object. */
export interface JsonObject {
  [key: string]: JsonValue;
}

/** Deepest nesting the parser accepts; configs need 3. */
const MAX_DEPTH = 64;

/** An escape JSON allows, matched from its backslash. */
const VALID_ESCAPE = /^\\(?:["\\/bfnrt]|u[0-9A-Fa-f]{4})/;

/** A syntax error at `offset` (a UTF-16 index into the text). */
export class JsonSyntaxError extends Error {
  constructor(message: string, readonly offset: number) {
    super(message);
  }
}

/** Parses `text`; throws {@linkcode JsonSyntaxError} with the offset of the mistake. */
export function parseJsonc(text: string): JsonValue {
  return new JsonParser(text).document();
}

/** The 1-based line and column of `offset` in `text`. */
export function lineAndColumn(text: string, offset: number): { line: number; column: number } {
  let line = 1;
  let start = 0;
  for (let i = 0; i < offset && i < text.length; i++) {
    if (text[i] === "\n") {
      line++;
      start = i + 1;
    }
  }
  return { line, column: offset - start + 1 };
}

class JsonParser {
  #text: string;
  #at = 0;

  constructor(text: string) {
    this.#text = text;
  }

  document(): JsonValue {
    if (this.#text.charCodeAt(0) === 0xfeff) this.#at = 1; // a byte order mark
    this.#skip();
    if (this.#at >= this.#text.length) this.#fail("the file is empty; expected a JSON object");
    const value = this.#value(0);
    this.#skip();
    if (this.#at < this.#text.length) this.#fail("unexpected text after the end of the JSON value");
    return value;
  }

  #fail(message: string, offset = this.#at): never {
    throw new JsonSyntaxError(message, offset);
  }

  #describe(): string {
    if (this.#at >= this.#text.length) return "the end of the file";
    return `'${this.#text[this.#at]}'`;
  }

  /** Skips whitespace and comments. */
  #skip(): void {
    const text = this.#text;
    while (this.#at < text.length) {
      const c = text[this.#at];
      if (c === " " || c === "\t" || c === "\n" || c === "\r") {
        this.#at++;
      } else if (c === "/" && text[this.#at + 1] === "/") {
        const end = text.indexOf("\n", this.#at);
        this.#at = end === -1 ? text.length : end + 1;
      } else if (c === "/" && text[this.#at + 1] === "*") {
        const end = text.indexOf("*/", this.#at + 2);
        if (end === -1) this.#fail("a /* comment is never closed with */");
        this.#at = end + 2;
      } else {
        return;
      }
    }
  }

  #value(depth: number): JsonValue {
    if (depth > MAX_DEPTH) this.#fail(`nesting deeper than ${MAX_DEPTH} levels`);
    const c = this.#text[this.#at];
    if (c === "{") return this.#object(depth);
    if (c === "[") return this.#array(depth);
    if (c === '"') return this.#string();
    if (c === "-" || (c >= "0" && c <= "9")) return this.#number();
    for (const [word, value] of [["true", true], ["false", false], ["null", null]] as const) {
      if (this.#text.startsWith(word, this.#at)) {
        this.#at += word.length;
        return value;
      }
    }
    this.#fail(`expected a value, found ${this.#describe()}`);
  }

  #object(depth: number): JsonObject {
    const result: JsonObject = Object.create(null);
    this.#at++; // {
    for (;;) {
      this.#skip();
      if (this.#text[this.#at] === "}") {
        this.#at++;
        return result;
      }
      if (this.#text[this.#at] !== '"') {
        this.#fail(`expected a "quoted" field name or '}', found ${this.#describe()}`);
      }
      const keyAt = this.#at;
      const key = this.#string();
      if (Object.hasOwn(result, key)) this.#fail(`field "${key}" appears twice`, keyAt);
      this.#skip();
      if (this.#text[this.#at] !== ":") this.#fail(`expected ':' after "${key}"`);
      this.#at++;
      this.#skip();
      result[key] = this.#value(depth + 1);
      this.#skip();
      if (this.#text[this.#at] === ",") {
        this.#at++;
      } else if (this.#text[this.#at] !== "}") {
        this.#fail(`expected ',' or '}' after the value of "${key}", found ${this.#describe()}`);
      }
    }
  }

  #array(depth: number): JsonValue[] {
    const result: JsonValue[] = [];
    this.#at++; // [
    for (;;) {
      this.#skip();
      if (this.#text[this.#at] === "]") {
        this.#at++;
        return result;
      }
      result.push(this.#value(depth + 1));
      this.#skip();
      if (this.#text[this.#at] === ",") {
        this.#at++;
      } else if (this.#text[this.#at] !== "]") {
        this.#fail(`expected ',' or ']' after a list item, found ${this.#describe()}`);
      }
    }
  }

  /** A string token: checked here (to say where a mistake is), decoded by JSON.parse. */
  #string(): string {
    const text = this.#text;
    const start = this.#at;
    let at = start + 1; // past the opening "
    for (;;) {
      if (at >= text.length) this.#fail("a string is never closed with '\"'", start);
      const c = text[at];
      if (c === '"') break;
      if (c < " ") this.#fail("a control character (such as a line break) inside a string", at);
      if (c === "\\") {
        if (!VALID_ESCAPE.test(text.slice(at, at + 6))) {
          this.#fail(
            'an invalid escape in a string (JSON allows \\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX)',
            at,
          );
        }
        at += 2; // \uXXXX's four hex digits follow as plain characters
      } else {
        at++;
      }
    }
    this.#at = at + 1;
    return JSON.parse(text.slice(start, at + 1));
  }

  #number(): number {
    const match = /^-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/.exec(this.#text.slice(this.#at));
    if (!match) this.#fail("a malformed number");
    this.#at += match[0].length;
    return Number(match[0]);
  }
}
