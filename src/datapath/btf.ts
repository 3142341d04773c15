/**
 * Struct layouts from an object file's BTF (libbpf's btf__parse), so the TypeScript side of a
 * kernel/userspace struct can be held against what clang actually built. Needs no privilege.
 */
import { existsSync } from 'node:fs';
import koffi from 'koffi';
import { SyscallError, describeErrno } from '../errors.js';
import { DatapathError } from './errors.js';
import { lastErrno, libbpf } from './libbpf.js';

const BTF_KIND_STRUCT = 4;
const BTF_KIND_UNION = 5;
/* struct btf_type { u32 name_off; u32 info; u32 size; } then vlen x struct btf_member
 * { u32 name_off; u32 type; u32 offset; } */
const BTF_TYPE_SIZE = 12;
const BTF_MEMBER_SIZE = 12;

export interface StructField {
  name: string;
  /** Byte offset (of the containing storage unit for a bitfield). */
  offset: number;
  /** Bytes; for a bitfield, the size of its declared type. */
  size: number;
  /** Set for bitfields only. */
  bitOffset?: number;
  bitSize?: number;
}

export interface StructLayout {
  name: string;
  size: number;
  fields: StructField[];
}

/** The layout of `struct <name>` (or union) in the object's BTF. Throws EOBJLAYOUT if absent. */
export function readStructLayout(objectPath: string, name: string): StructLayout {
  if (!existsSync(objectPath)) {
    throw new DatapathError(
      'EOBJMISSING',
      `read btf of ${objectPath}: no such file; run 'bash scripts/setup.sh' to build it`,
    );
  }
  const bpf = libbpf();
  const btf = bpf.btf__parse(objectPath, null);
  if (btf === null) {
    const errno = lastErrno();
    throw new DatapathError(
      'EOBJOPEN',
      `read btf of ${objectPath}: ${describeErrno(errno)}; rebuild it with 'bash scripts/setup.sh' (clang -g emits the btf)`,
      new SyscallError('btf__parse', errno),
    );
  }
  try {
    let id = bpf.btf__find_by_name_kind(btf, name, BTF_KIND_STRUCT);
    if (id < 0) id = bpf.btf__find_by_name_kind(btf, name, BTF_KIND_UNION);
    if (id < 0) {
      throw new DatapathError(
        'EOBJLAYOUT',
        `read btf of ${objectPath}: no struct ${name}; rebuild it with 'bash scripts/setup.sh', or check that a map or program uses the struct (clang drops unused types)`,
      );
    }
    const t = bpf.btf__type_by_id(btf, id)!;
    const head = new Uint32Array(koffi.view(t, BTF_TYPE_SIZE));
    const info = head[1]!;
    const vlen = info & 0xffff;
    const kflag = info >>> 31 === 1;
    const size = head[2]!;
    const members = new Uint32Array(
      koffi.view(t, BTF_TYPE_SIZE + vlen * BTF_MEMBER_SIZE),
      BTF_TYPE_SIZE,
      vlen * 3,
    );
    const fields: StructField[] = [];
    for (let i = 0; i < vlen; i++) {
      const nameOff = members[i * 3]!;
      const type = members[i * 3 + 1]!;
      const raw = members[i * 3 + 2]!;
      const bitOffset = kflag ? raw & 0xffffff : raw;
      const bitSize = kflag ? raw >>> 24 : 0;
      const fieldSize = Number(bpf.btf__resolve_size(btf, type));
      const field: StructField = {
        name: bpf.btf__name_by_offset(btf, nameOff) ?? '',
        offset: Math.floor(bitOffset / 8),
        size: fieldSize,
      };
      if (bitSize > 0 || bitOffset % 8 !== 0) {
        field.bitOffset = bitOffset;
        field.bitSize = bitSize;
      }
      fields.push(field);
    }
    return { name, size, fields };
  } finally {
    bpf.btf__free(btf);
  }
}

/**
 * Throws EOBJLAYOUT naming every difference between the object's `struct <expected.name>` and the
 * TypeScript side's idea of it (size, and each field's offset and size, matched by name).
 */
export function checkStructLayout(objectPath: string, expected: StructLayout): void {
  const actual = readStructLayout(objectPath, expected.name);
  const diffs: string[] = [];
  if (actual.size !== expected.size)
    diffs.push(`size ${actual.size} in the object, ${expected.size} in TypeScript`);
  const want = new Map(expected.fields.map((f) => [f.name, f]));
  for (const f of actual.fields) {
    const w = want.get(f.name);
    if (!w) {
      diffs.push(`field ${f.name} missing in TypeScript`);
    } else if (w.offset !== f.offset || w.size !== f.size) {
      diffs.push(
        `field ${f.name} at offset ${f.offset} size ${f.size} in the object, offset ${w.offset} size ${w.size} in TypeScript`,
      );
    }
    want.delete(f.name);
  }
  for (const name of want.keys()) diffs.push(`field ${name} missing in the object`);
  if (diffs.length > 0) {
    throw new DatapathError(
      'EOBJLAYOUT',
      `${objectPath}: struct ${expected.name} differs from the TypeScript layout: ${diffs.join('; ')}; ` +
        `rebuild the object with 'bash scripts/setup.sh' if the header changed, else update the TypeScript side`,
    );
  }
}
