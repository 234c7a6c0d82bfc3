/**
 * `%%batch` cells in the editor: the first line styled as the magic's options (flags, values),
 * the body as a prompt template, with its `{column}` fields marked and no Python highlighting.
 *
 * A CodeMirror 6 view plugin adds decorations only; the colours are JupyterLab's editor theme
 * variables (style/base.css), so they follow the light and dark themes.
 */
import { Extension, Range } from '@codemirror/state';
import {
  Decoration,
  DecorationSet,
  EditorView,
  ViewPlugin,
  ViewUpdate
} from '@codemirror/view';

/** Flags of `%%batch` that take no value (pinned to the magic's parser by a Python test). */
export const BOOLEAN_FLAGS = [
  '--bg',
  '--dry-run',
  '--no-cache',
  '--quiet',
  '--stream',
  '-q'
];
export const KINDS = ['chat', 'completion', 'embedding', 'image'];

const MAGIC = /^%%batch(?=\s|$)/;
const OPTION_TOKEN = /"(?:[^"\\]|\\.)*"?|'(?:[^'\\]|\\.)*'?|\S+/g;

const mark = (name: string) => Decoration.mark({ class: `cm-batchmagic-${name}` });
const MARKS = {
  magic: mark('magic'),
  kind: mark('kind'),
  flag: mark('flag'),
  value: mark('value'),
  field: mark('field'),
  escape: mark('escape'),
  error: mark('error')
};
const OPTIONS_LINE = Decoration.line({ class: 'cm-batchmagic-options' });
const PROMPT_LINE = Decoration.line({ class: 'cm-batchmagic-prompt' });

type Kind = keyof typeof MARKS;
/** A styled stretch of text: [from, to) and what it is. */
export interface IPart {
  from: number;
  to: number;
  kind: Kind;
}

/** Whether a cell's text is a `%%batch` cell. */
export function isBatchCell(text: string): boolean {
  return MAGIC.test(text);
}

/** The parts of the magic's line: the magic, the kind, flags and their values. */
export function optionParts(line: string, offset = 0): IPart[] {
  const parts: IPart[] = [];
  let previous: 'magic' | 'flag' | 'boolean' | 'value' | 'kind' = 'magic';
  for (const match of line.matchAll(OPTION_TOKEN)) {
    const text = match[0];
    const from = offset + (match.index ?? 0);
    const to = from + text.length;
    if (from === offset && MAGIC.test(text)) {
      parts.push({ from, to, kind: 'magic' });
      continue;
    }
    if (text.startsWith('-') && text.length > 1 && !/^-\d/.test(text)) {
      const eq = text.indexOf('=');
      const flag = eq > 0 ? text.slice(0, eq) : text;
      parts.push({ from, to: from + flag.length, kind: 'flag' });
      if (eq > 0 && eq < text.length - 1) {
        parts.push({ from: from + eq + 1, to, kind: 'value' });
      }
      previous = eq > 0 ? 'value' : BOOLEAN_FLAGS.includes(flag) ? 'boolean' : 'flag';
      continue;
    }
    if (previous === 'flag') {
      parts.push({ from, to, kind: 'value' });
      previous = 'value';
    } else {
      parts.push({ from, to, kind: KINDS.includes(text) ? 'kind' : 'error' });
      previous = 'kind';
    }
  }
  return parts;
}

/**
 * The parts of a prompt template (Python's format syntax, as batchmagic reads it): `{field}`
 * (with a format spec or conversion), `{{` and `}}` for literal braces, a lone brace an error.
 */
export function templateParts(text: string, offset = 0): IPart[] {
  const parts: IPart[] = [];
  let i = 0;
  while (i < text.length) {
    const ch = text[i];
    if (ch !== '{' && ch !== '}') {
      i += 1;
      continue;
    }
    if (text[i + 1] === ch) {
      parts.push({ from: offset + i, to: offset + i + 2, kind: 'escape' });
      i += 2;
      continue;
    }
    const close = ch === '{' ? text.indexOf('}', i + 1) : -1;
    const nested = ch === '{' ? text.indexOf('{', i + 1) : -1;
    if (close < 0 || (nested >= 0 && nested < close)) {
      parts.push({ from: offset + i, to: offset + i + 1, kind: 'error' });
      i += 1;
      continue;
    }
    parts.push({ from: offset + i, to: offset + close + 1, kind: 'field' });
    i = close + 1;
  }
  return parts;
}

function decorate(view: EditorView): DecorationSet {
  const doc = view.state.doc;
  if (!isBatchCell(doc.line(1).text)) {
    return Decoration.none;
  }
  const ranges: Range<Decoration>[] = [];
  const first = doc.line(1);
  ranges.push(OPTIONS_LINE.range(first.from));
  for (const p of optionParts(first.text, first.from)) {
    ranges.push(MARKS[p.kind].range(p.from, p.to));
  }
  for (const { from, to } of view.visibleRanges) {
    let pos = Math.max(from, first.to + 1);
    while (pos <= to && pos <= doc.length) {
      const line = doc.lineAt(pos);
      ranges.push(PROMPT_LINE.range(line.from));
      for (const p of templateParts(line.text, line.from)) {
        ranges.push(MARKS[p.kind].range(p.from, p.to));
      }
      pos = line.to + 1;
    }
  }
  return Decoration.set(ranges, true);
}

/**
 * The editor extension; `applies()` says whether the editor's cell is a code cell of a Python
 * notebook (markdown and raw cells are left alone).
 */
export function batchCells(applies: () => boolean): Extension {
  return ViewPlugin.fromClass(
    class {
      decorations: DecorationSet;
      applied: boolean;

      constructor(view: EditorView) {
        this.applied = applies();
        this.decorations = this.applied ? decorate(view) : Decoration.none;
      }

      update(update: ViewUpdate): void {
        // the cell's language is known only once the kernel answers (the editor is then
        // reconfigured, not edited), so whether it applies is asked again on every update
        const now = applies();
        if (update.docChanged || update.viewportChanged || now !== this.applied) {
          this.applied = now;
          this.decorations = now ? decorate(update.view) : Decoration.none;
        }
      }
    },
    { decorations: plugin => plugin.decorations }
  );
}
