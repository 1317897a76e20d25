import { describe, expect, it } from 'vitest';
import { CborMap, CborTag, encode } from '@rotor/cose';
import {
  encodeCommandSequence,
  encodeParameters,
  parseCommandSequence,
  parseParameterValue,
  type SuitCommand,
} from '../src/commands.ts';
import { SuitError } from '../src/errors.ts';
import { sequencesOf, vectorFiles } from './commands-vectors.ts';

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
const bstr = (v: unknown): Uint8Array => encode(v);
const m = (...e: [unknown, unknown][]): CborMap => new CborMap(e);

function fails(
  bytes: Uint8Array,
  code: string,
  pathPart?: string,
  limits?: { maxNesting?: number; maxCommands?: number },
): SuitError {
  try {
    parseCommandSequence(bytes, '$', limits);
  } catch (e) {
    expect(e).toBeInstanceOf(SuitError);
    const err = e as SuitError;
    expect(err.code, err.message).toBe(code);
    if (pathPart !== undefined) expect(err.path).toBe(pathPart);
    return err;
  }
  throw new Error('expected a failure');
}

describe('parseCommandSequence / encodeCommandSequence on every vector', () => {
  const all = vectorFiles().flatMap((f) => sequencesOf(f));
  it('finds the sequences of all vectors', () => {
    expect(all.length).toBeGreaterThan(30);
  });
  for (const s of all) {
    it(`round trip ${s.file.split('/').slice(-2).join('/')} ${s.where}`, () => {
      const cmds = parseCommandSequence(s.bytes, s.where);
      expect(hex(encodeCommandSequence(cmds))).toBe(hex(s.bytes));
    });
  }
});

describe('parsed structure', () => {
  it('example3 try-each alternatives and parameters', () => {
    const seq = [
      20,
      m([1, new Uint8Array(16)]),
      15,
      [bstr([20, m([5, 0]), 5, 5]), bstr([20, m([5, 1]), 5, 5]), null],
      12,
      [0],
      32,
      bstr([3, 15]),
    ];
    const cmds = parseCommandSequence(encode(seq), '$');
    expect(cmds[0]).toMatchObject({ op: 'params', code: 20 });
    const te = cmds[1];
    expect(te?.op).toBe('try-each');
    if (te?.op !== 'try-each') return;
    expect(te.alternatives).toHaveLength(2);
    expect(te.trailingNil).toBe(true);
    expect(cmds[2]).toEqual({ op: 'set-component-index', code: 12, index: [0], asArray: true });
    expect(cmds[3]).toMatchObject({ op: 'run-sequence', sequence: [{ op: 'policy', code: 3, policy: 15 }] });
    expect(hex(encodeCommandSequence(cmds))).toBe(hex(encode(seq)));
  });

  it('UM commands, custom commands and typed parameters round trip', () => {
    const version = bstr([2, [1, 2, -1, 3]]);
    const wait = bstr(m([2, 1], [5, 1700000000]));
    const meta = bstr(m([5, 1]));
    const enc = bstr(
      new CborTag(96, [
        bstr(m([1, 1])),
        m([5, new Uint8Array(12)]),
        null,
        [[new Uint8Array(0), m([1, -3]), new Uint8Array(24)]],
      ]),
    );
    const params = m(
      [1, new CborTag(112, new Uint8Array([1, 2, 3]))],
      [4, 2n ** 63n],
      [12, false],
      [13, true],
      [19, enc],
      [23, new Uint8Array([1])],
      [27, -1],
      [28, version],
      [29, wait],
      [30, meta],
      [-300, 'x'],
    );
    const seq = [
      19,
      params,
      34,
      m([0, m([14, 5])], [1, m([21, 'u'])]),
      35,
      m([0, [3, 14, -300]]),
      -257,
      null,
      -258,
      'a',
      12,
      true,
      12,
      3,
      12,
      [1, 2],
      28,
      15,
      29,
      0,
    ];
    const cmds = parseCommandSequence(encode(seq), '$');
    const p = cmds[0];
    if (p?.op !== 'params') throw new Error('params expected');
    expect(p.params.get(1)).toMatchObject({ type: 'vendor-id', pen: true });
    expect(p.params.get(4)).toMatchObject({ type: 'uint', value: 2n ** 63n });
    expect(p.params.get(27)).toMatchObject({ type: 'int', value: -1n });
    expect(p.params.get(28)).toMatchObject({ type: 'version', comparison: 2, parts: [1, 2, -1, 3] });
    expect(p.params.get(19)).toMatchObject({ type: 'encryption-info' });
    expect(p.params.get(-300)).toMatchObject({ type: 'custom', value: 'x' });
    expect(hex(encodeParameters(p.params))).toBe(hex(encode(params)));
    expect(cmds[4]).toEqual({ op: 'custom', code: -258, arg: 'a' });
    expect(cmds[5]).toEqual({ op: 'set-component-index', code: 12, index: true });
    expect(cmds[6]).toEqual({ op: 'set-component-index', code: 12, index: [3] });
    expect(hex(encodeCommandSequence(cmds))).toBe(hex(encode(seq)));
  });

  it('encodes programmatically built commands deterministically', () => {
    const cmds: SuitCommand[] = [
      {
        op: 'params',
        code: 20,
        params: new Map([
          [21, parseParameterValue(21, 'http://x', '$')],
          [14, parseParameterValue(14, 10, '$')],
        ]),
      },
      { op: 'set-component-index', code: 12, index: [1] },
      { op: 'policy', code: 21, policy: 2 },
    ];
    // map keys come out sorted: 14 before 21
    expect(hex(encodeCommandSequence(cmds))).toBe(
      hex(encode([20, m([14, 10], [21, 'http://x']), 12, 1, 21, 2])),
    );
  });
});

describe('hostile sequences', () => {
  it('rejects non-arrays, empty and odd-length sequences', () => {
    fails(encode(m([1, 2])), 'SUIT_COMMAND_INVALID', '$');
    fails(encode([]), 'SUIT_COMMAND_INVALID', '$');
    fails(encode([1, 15, 2]), 'SUIT_COMMAND_INVALID', '$');
  });
  it('rejects malformed and non-canonical CBOR', () => {
    fails(new Uint8Array([0x82, 0x01]), 'SUIT_COMMAND_INVALID', '$');
    fails(new Uint8Array([0x82, 0x18, 0x01, 0x0f]), 'SUIT_COMMAND_INVALID', '$'); // non-preferred int
    // unsorted parameter map keys {21: "u", 14: 1}
    fails(new Uint8Array([0x82, 0x14, 0xa2, 0x15, 0x61, 0x75, 0x0e, 0x01]), 'SUIT_COMMAND_INVALID', '$');
    fails(new Uint8Array([0x82, 0x01, 0x0f, 0x00]), 'SUIT_COMMAND_INVALID', '$'); // trailing byte
  });
  it('rejects unknown commands (code ≥ -256) and bad custom arguments', () => {
    fails(encode([3, 15, 9999, 0]), 'SUIT_COMMAND_UNSUPPORTED', '$[2]');
    fails(encode([16, 0]), 'SUIT_COMMAND_UNSUPPORTED', '$[0]');
    fails(encode([-256, 0]), 'SUIT_COMMAND_UNSUPPORTED', '$[0]');
    fails(encode(['x', 0]), 'SUIT_COMMAND_INVALID', '$[0]');
    fails(encode([-257, [1]]), 'SUIT_COMMAND_INVALID', '$[1]');
  });
  it('rejects a wrong argument type for every command at its position', () => {
    const samples: Record<string, unknown[]> = {
      policy: [16, -1, 'x', true, null, [1], new Uint8Array(1)],
      index: [-1, false, [], ['x'], 'x', null, m([1, 1])],
      'try-each': [
        [bstr([3, 15])],
        [bstr([3, 15]), 1],
        [],
        null,
        bstr([3, 15]),
        [bstr([3, 15]), bstr([3, 15]), null, null],
      ],
      params: [[], null, m(), m([9999, 1]), 1],
      sequence: [[3, 15], null, 1, bstr([])],
      'override-multiple': [m(), m([-1, m([14, 1])]), m([0, 1]), [1]],
      'copy-params': [m(), m([0, []]), m([0, ['x']]), m([0, [9999]]), m([-1, [1]])],
    };
    const codes: [number, string][] = [
      [1, 'policy'],
      [2, 'policy'],
      [3, 'policy'],
      [4, 'policy'],
      [5, 'policy'],
      [6, 'policy'],
      [7, 'policy'],
      [8, 'policy'],
      [11, 'policy'],
      [12, 'index'],
      [14, 'policy'],
      [15, 'try-each'],
      [18, 'policy'],
      [19, 'params'],
      [20, 'params'],
      [21, 'policy'],
      [22, 'policy'],
      [23, 'policy'],
      [24, 'policy'],
      [25, 'policy'],
      [26, 'policy'],
      [27, 'policy'],
      [28, 'policy'],
      [29, 'policy'],
      [31, 'policy'],
      [32, 'sequence'],
      [33, 'policy'],
      [34, 'override-multiple'],
      [35, 'copy-params'],
    ];
    for (const [code, kind] of codes) {
      for (const bad of samples[kind] ?? []) {
        let err: unknown;
        try {
          parseCommandSequence(encode([3, 15, code, bad]), '$');
        } catch (e) {
          err = e;
        }
        expect(err, `command ${code} with ${String(bad)}`).toBeInstanceOf(SuitError);
        const se = err as SuitError;
        expect([
          'SUIT_COMMAND_INVALID',
          'SUIT_PARAMETER_INVALID',
          'SUIT_PARAMETER_UNSUPPORTED',
          'SUIT_COMMAND_UNSUPPORTED',
        ]).toContain(se.code);
        expect(se.path?.startsWith('$[3]')).toBe(true);
      }
    }
  });
  it('validates every parameter type and names the field', () => {
    const bad: [number, unknown, string][] = [
      [1, new Uint8Array(15), 'SUIT_PARAMETER_INVALID'],
      [1, new CborTag(111, new Uint8Array(3)), 'SUIT_PARAMETER_INVALID'],
      [2, new Uint8Array(17), 'SUIT_PARAMETER_INVALID'],
      [3, bstr([-16]), 'SUIT_PARAMETER_INVALID'],
      [3, bstr(['x', new Uint8Array(32)]), 'SUIT_PARAMETER_INVALID'],
      [3, [-16, new Uint8Array(32)], 'SUIT_PARAMETER_INVALID'],
      [3, new Uint8Array([0xff]), 'SUIT_PARAMETER_INVALID'],
      [4, -1, 'SUIT_PARAMETER_INVALID'],
      [12, 1, 'SUIT_PARAMETER_INVALID'],
      [14, 'big', 'SUIT_PARAMETER_INVALID'],
      [18, 'text', 'SUIT_PARAMETER_INVALID'],
      [19, bstr(new CborTag(18, [1, 2, 3, 4])), 'SUIT_PARAMETER_INVALID'],
      [19, bstr(new CborTag(96, [1, 2, 3])), 'SUIT_PARAMETER_INVALID'],
      [21, new Uint8Array(1), 'SUIT_PARAMETER_INVALID'],
      [27, 'x', 'SUIT_PARAMETER_INVALID'],
      [28, bstr([6, [1]]), 'SUIT_PARAMETER_INVALID'],
      [28, bstr([1, []]), 'SUIT_PARAMETER_INVALID'],
      [29, bstr(m([5, -1])), 'SUIT_PARAMETER_INVALID'],
      [29, bstr(m()), 'SUIT_PARAMETER_INVALID'],
      [30, bstr([1]), 'SUIT_PARAMETER_INVALID'],
      [-300, [1], 'SUIT_PARAMETER_INVALID'],
      [6, 1, 'SUIT_PARAMETER_UNSUPPORTED'],
      [-1, 1, 'SUIT_PARAMETER_UNSUPPORTED'],
    ];
    for (const [k, v, code] of bad) {
      const err = fails(encode([20, m([k, v])]), code);
      expect(err.path?.startsWith(`$[1]{${k}}`), `${k}: ${err.path ?? ''}`).toBe(true);
    }
  });
  it('names nested paths inside try-each and run-sequence', () => {
    fails(encode([15, [bstr([3, 15]), bstr([3, 'x'])]]), 'SUIT_COMMAND_INVALID', '$[1][1].cbor[1]');
    fails(
      encode([32, bstr([32, bstr([20, m([14, -1])])])]),
      'SUIT_PARAMETER_INVALID',
      '$[1].cbor[1].cbor[1]{14}',
    );
  });
  it('bounds nesting depth', () => {
    let seq = encode([3, 15]);
    for (let i = 0; i < 9; i++) seq = encode([15, [seq, seq]]);
    fails(seq, 'SUIT_PROCESSOR_LIMIT');
    let ok = encode([3, 15]);
    for (let i = 0; i < 8; i++) ok = encode([32, ok]);
    expect(parseCommandSequence(ok, '$')).toHaveLength(1);
    fails(encode([32, ok]), 'SUIT_PROCESSOR_LIMIT');
    fails(ok, 'SUIT_PROCESSOR_LIMIT', undefined, { maxNesting: 3 });
  });
  it('bounds the command count including nested ones (no exponential blow-up)', () => {
    fails(
      encode(Array.from({ length: 2050 }, (_, i) => (i % 2 === 0 ? 3 : 15))),
      'SUIT_PROCESSOR_LIMIT',
      '$[2048]',
    );
    // a try-each tree of depth 8 with 2 alternatives each would be 2^8 leaves; cap at 100 commands
    let seq = encode([3, 15]);
    for (let i = 0; i < 8; i++) seq = encode([15, [seq, seq]]);
    fails(seq, 'SUIT_PROCESSOR_LIMIT', undefined, { maxCommands: 100 });
  });
});
