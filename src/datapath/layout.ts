/**
 * Struct layouts shared with the kernel (offsets and sizes by C member name) and the little
 * readers the decoders of flow/types.ts and firewall/types.ts both use. The layouts are held
 * against the objects' BTF by the *-btf kernel tests.
 */
import { endianness } from 'node:os';

export interface FieldLayout {
  readonly offset: number;
  readonly size: number;
}

export interface StructLayout<F extends string = string> {
  /** The C struct name, as in the object's BTF. */
  readonly name: string;
  readonly size: number;
  /** Every member, padding included, by its C name. */
  readonly fields: { readonly [K in F]: FieldLayout };
}

/** A layout from `[offset, size]` per member. */
export function struct<const F extends Record<string, readonly [number, number]>>(
  name: string,
  size: number,
  members: F,
): StructLayout<Extract<keyof F, string>> {
  const fields = {} as Record<string, FieldLayout>;
  for (const [k, [offset, fieldSize]] of Object.entries(members)) fields[k] = { offset, size: fieldSize };
  return { name, size, fields: fields as StructLayout<Extract<keyof F, string>>['fields'] };
}

const LE = endianness() === 'LE';

/** A u64 in host order at offset, as a number. */
export function u64(view: DataView, offset: number): number {
  // Two 32-bit reads and a multiply beat getBigUint64 + Number(); exact below 2^53 (packet and
  // byte counts; nanosecond times lose a few ns after 104 days of uptime, far below 1 ms).
  return LE
    ? view.getUint32(offset, true) + view.getUint32(offset + 4, true) * 4294967296
    : view.getUint32(offset + 4, false) + view.getUint32(offset, false) * 4294967296;
}

export function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Sum over CPUs of one per-CPU value made of u64 slots (a counter array entry). */
export function sumPerCpu(value: Uint8Array): number {
  const view = viewOf(value);
  let total = 0;
  for (let o = 0; o + 8 <= value.byteLength; o += 8) total += u64(view, o);
  return total;
}
