/** The component graph of a pipeline: edges run from an input to the component that reads it. */
export interface GraphNode {
  id: string;
  inputs: readonly string[];
}

function outputsOf(nodes: readonly GraphNode[]): Map<string, string[]> {
  const outputs = new Map<string, string[]>(nodes.map((n) => [n.id, []]));
  for (const node of nodes) {
    for (const input of node.inputs) outputs.get(input)?.push(node.id);
  }
  return outputs;
}

/**
 * Ids ordered so each comes after all of its inputs; among those ready at the same time, the one
 * declared first goes first, so the order is stable. Nodes on or behind a cycle are left out.
 */
export function topologicalOrder(nodes: readonly GraphNode[]): string[] {
  const known = new Set(nodes.map((n) => n.id));
  const placed = new Set<string>();
  const order: string[] = [];
  let progress = true;
  while (progress) {
    progress = false;
    for (const node of nodes) {
      if (placed.has(node.id)) continue;
      if (node.inputs.every((i) => placed.has(i) || !known.has(i))) {
        placed.add(node.id);
        order.push(node.id);
        progress = true;
        break;
      }
    }
  }
  return order;
}

/**
 * One cycle per strongly connected component that has one, in data-flow order and closed
 * (`['a', 'b', 'a']` when a feeds b and b feeds a), starting at the node declared first.
 */
export function findCycles(nodes: readonly GraphNode[]): string[][] {
  const outputs = outputsOf(nodes);
  const declared = new Map(nodes.map((n, i) => [n.id, i]));
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const components: string[][] = [];
  let counter = 0;

  // Tarjan's algorithm; pipelines are small, so recursion depth is no concern.
  const visit = (id: string): void => {
    index.set(id, counter);
    low.set(id, counter);
    counter++;
    stack.push(id);
    onStack.add(id);
    for (const next of outputs.get(id) ?? []) {
      if (!index.has(next)) {
        visit(next);
        low.set(id, Math.min(low.get(id)!, low.get(next)!));
      } else if (onStack.has(next)) {
        low.set(id, Math.min(low.get(id)!, index.get(next)!));
      }
    }
    if (low.get(id) === index.get(id)) {
      const component: string[] = [];
      let member: string;
      do {
        member = stack.pop()!;
        onStack.delete(member);
        component.push(member);
      } while (member !== id);
      components.push(component);
    }
  };
  for (const node of nodes) if (!index.has(node.id)) visit(node.id);

  const cycles: string[][] = [];
  for (const component of components) {
    const members = new Set(component);
    const start = [...component].sort((a, b) => declared.get(a)! - declared.get(b)!)[0]!;
    const selfLoop = outputs.get(start)!.includes(start);
    if (component.length === 1 && !selfLoop) continue;
    cycles.push(shortestCycle(start, members, outputs));
  }
  return cycles.sort((a, b) => declared.get(a[0]!)! - declared.get(b[0]!)!);
}

function shortestCycle(start: string, members: Set<string>, outputs: Map<string, string[]>): string[] {
  const previous = new Map<string, string>();
  const queue = [start];
  while (queue.length > 0) {
    const id = queue.shift()!;
    for (const next of outputs.get(id) ?? []) {
      if (!members.has(next)) continue;
      if (next === start) {
        const path = [start];
        for (let at = id; at !== start; at = previous.get(at)!) path.push(at);
        path.push(start);
        return [path[0]!, ...path.slice(1, -1).reverse(), start];
      }
      if (!previous.has(next)) {
        previous.set(next, id);
        queue.push(next);
      }
    }
  }
  return [start, start];
}

/** Ids that no other node reads from. */
export function unconsumed(nodes: readonly GraphNode[]): string[] {
  const outputs = outputsOf(nodes);
  return nodes.filter((n) => outputs.get(n.id)!.length === 0).map((n) => n.id);
}
