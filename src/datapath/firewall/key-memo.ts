/**
 * A value derived from a session key (its text, its KV key), kept from one read of the session map
 * to the next. Keys are matched by their bytes as the map holds them: hashed, then compared word by
 * word, so a key seen in the previous read costs no decoding and allocates nothing. Only the keys
 * of the latest read are kept.
 */
import { SESSION_KEY } from './types.js';

const WORDS = SESSION_KEY.size / 4;

interface Entry<T> {
  words: Uint32Array;
  value: T;
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

function sameAt(entry: Uint32Array, words: Uint32Array, o: number): boolean {
  for (let j = 0; j < WORDS; j++) if (entry[j] !== words[o + j]) return false;
  return true;
}

export class SessionKeyMemo<T> {
  #entries = new Map<number, Entry<T>>();

  /**
   * The value of each of `count` keys packed in `keys` (SESSION_KEY.size bytes each, as a batch
   * read of the map returns them), `derive` called only for keys the previous call did not have.
   * Keys the previous call had and this one has not are forgotten.
   */
  map(keys: Uint8Array, count: number, derive: (keys: Uint8Array, offset: number) => T): T[] {
    const aligned = keys.byteOffset % 4 === 0 ? keys : keys.slice();
    const words = new Uint32Array(aligned.buffer, aligned.byteOffset, count * WORDS);
    const previous = this.#entries;
    const next = new Map<number, Entry<T>>();
    const out = new Array<T>(count);
    for (let i = 0; i < count; i++) {
      const o = i * WORDS;
      const h = hashAt(words, o);
      let e = previous.get(h);
      if (e === undefined || !sameAt(e.words, words, o)) {
        e = next.get(h);
        if (e === undefined || !sameAt(e.words, words, o)) {
          e = { words: words.slice(o, o + WORDS), value: derive(aligned, i * SESSION_KEY.size) };
        }
      }
      // Two keys with one hash: the later one is kept; both values are right.
      next.set(h, e);
      out[i] = e.value;
    }
    this.#entries = next;
    return out;
  }

  get size(): number {
    return this.#entries.size;
  }
}
