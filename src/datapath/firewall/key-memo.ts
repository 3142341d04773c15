/**
 * A value derived from a session key (its text, its KV key), kept from one read of the session map
 * to the next. Keys are matched by their bytes as the map holds them: hashed, then compared word by
 * word, so a key seen in the previous read costs no decoding and allocates nothing. Only the keys
 * of the latest read are kept.
 */
import { SESSION_KEY } from './types.js';

const WORDS = SESSION_KEY.size / 4;

/** One read's keys: their words back to back, their values, and the index of each by hash. */
interface Generation<T> {
  words: Uint32Array;
  values: T[];
  byHash: Map<number, number>;
}

function hashAt(words: Uint32Array, o: number): number {
  let a = 0x811c9dc5;
  let b = 0x9747b28c;
  for (let j = 0; j < WORDS; j++) {
    const w = words[o + j]!;
    a = Math.imul(a ^ w, 0x01000193);
    b = Math.imul(b ^ w, 0x5bd1e995);
    b ^= b >>> 15;
  }
  // 30 bits: a small integer, which V8 keeps in a Map without boxing it. Keys sharing one are
  // told apart by their bytes.
  return (a ^ b) & 0x3fffffff;
}

function sameAt(a: Uint32Array, ao: number, b: Uint32Array, bo: number): boolean {
  for (let j = 0; j < WORDS; j++) if (a[ao + j] !== b[bo + j]) return false;
  return true;
}

export class SessionKeyMemo<T> {
  #last: Generation<T> = { words: new Uint32Array(0), values: [], byHash: new Map() };

  /**
   * The value of each of `count` keys packed in `keys` (SESSION_KEY.size bytes each, as a batch
   * read of the map returns them), `derive` called only for keys the previous call did not have.
   * Keys the previous call had and this one has not are forgotten.
   */
  map(keys: Uint8Array, count: number, derive: (keys: Uint8Array, offset: number) => T): T[] {
    const aligned = keys.byteOffset % 4 === 0 ? keys : keys.slice();
    // One copy of this read's keys, which the next read matches against.
    const words = new Uint32Array(aligned.buffer, aligned.byteOffset, count * WORDS).slice();
    const last = this.#last;
    const values = new Array<T>(count);
    const byHash = new Map<number, number>();
    for (let i = 0; i < count; i++) {
      const o = i * WORDS;
      const h = hashAt(words, o);
      const j = last.byHash.get(h);
      if (j !== undefined && sameAt(last.words, j * WORDS, words, o)) {
        values[i] = last.values[j]!;
      } else {
        const k = byHash.get(h);
        values[i] =
          k !== undefined && sameAt(words, k * WORDS, words, o)
            ? values[k]!
            : derive(aligned, i * SESSION_KEY.size);
      }
      // Two keys with one hash: the later one is found next time, the earlier derived again.
      byHash.set(h, i);
    }
    this.#last = { words, values, byHash };
    return values;
  }

  /** Keys kept from the last read. */
  get size(): number {
    return this.#last.byHash.size;
  }
}
