import { describe, expect, it } from 'vitest';
import { findCycles, topologicalOrder, unconsumed } from '../../../src/pipeline/graph.js';

const n = (id: string, ...inputs: string[]) => ({ id, inputs });

describe('topologicalOrder', () => {
  it('puts every node after its inputs, keeping declaration order among ready ones', () => {
    const nodes = [n('sink', 'b', 'a'), n('b', 'a'), n('a', 's1', 's2'), n('s2'), n('s1')];
    expect(topologicalOrder(nodes)).toEqual(['s2', 's1', 'a', 'b', 'sink']);
  });

  it('orders fan-out and fan-in', () => {
    const nodes = [
      n('src'),
      n('left', 'src'),
      n('right', 'src'),
      n('join', 'right', 'left'),
      n('out1', 'join'),
      n('out2', 'src', 'join'),
    ];
    expect(topologicalOrder(nodes)).toEqual(['src', 'left', 'right', 'join', 'out1', 'out2']);
  });

  it('leaves out nodes on or behind a cycle', () => {
    expect(topologicalOrder([n('s'), n('a', 's', 'b'), n('b', 'a'), n('c', 'b'), n('d', 's')])).toEqual([
      's',
      'd',
    ]);
  });
});

describe('findCycles', () => {
  it('finds none in a DAG', () => {
    expect(findCycles([n('s'), n('a', 's'), n('b', 's', 'a'), n('o', 'a', 'b')])).toEqual([]);
  });

  it('finds one cycle per loop, in data-flow order, from the node declared first', () => {
    const nodes = [n('s'), n('c', 's', 'b'), n('a', 'c'), n('b', 'a'), n('x', 'x'), n('o', 'b', 'x')];
    expect(findCycles(nodes)).toEqual([
      ['c', 'a', 'b', 'c'],
      ['x', 'x'],
    ]);
  });

  it('reports the shortest cycle through the first node of a tangle', () => {
    // a -> b -> a and a -> c -> d -> a share a; the two-node loop is shown.
    const nodes = [n('a', 'b', 'd'), n('b', 'a'), n('c', 'a'), n('d', 'c')];
    expect(findCycles(nodes)).toEqual([['a', 'b', 'a']]);
  });
});

describe('unconsumed', () => {
  it('lists the nodes nothing reads from', () => {
    expect(unconsumed([n('s'), n('t', 's'), n('u', 's'), n('o', 't')])).toEqual(['u', 'o']);
  });
});
