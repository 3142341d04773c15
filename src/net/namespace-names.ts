/**
 * The interface names of the network namespaces an `ebpf_flows` source follows, by the label its
 * records carry in `networkNamespace`: the source re-lists a namespace's links on every link
 * event and leaves the table here (the last one stays after the namespace is gone: its last flows
 * are still being exported), and `decorate` names the records of that namespace from it
 * without a listing or a monitor of its own. One table per namespace and process.
 */
const tables = new Map<string, ReadonlyMap<number, string>>();

/** Sets (or, with undefined, forgets) the ifindex -> name table of a namespace; undefined label: ignored. */
export function setNamespaceNames(
  label: string | undefined,
  table: ReadonlyMap<number, string> | undefined,
): void {
  if (label === undefined) return;
  if (table === undefined) tables.delete(label);
  else tables.set(label, table);
}

/** The ifindex -> name table of a followed namespace, if a source follows it. */
export function namespaceNames(label: string): ReadonlyMap<number, string> | undefined {
  return tables.get(label);
}
