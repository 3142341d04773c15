/**
 * Translates session times between this node's monotonic clock and wall-clock time.
 *
 * The kernel stamps sessions with bpf_ktime_get_ns (CLOCK_MONOTONIC), which counts from this
 * node's boot and means nothing on another node. A writer converts its monotonic last-seen to
 * wall-clock milliseconds; a loader converts wall-clock milliseconds back to its own monotonic
 * clock. The error is the two nodes' wall-clock skew, which NTP keeps far below an idle timeout.
 * process.hrtime reads CLOCK_MONOTONIC as the kernel does.
 */
export interface Clocks {
  monotonicNs(): bigint;
  wallMs(): number;
}

export const systemClocks: Clocks = {
  monotonicNs: () => process.hrtime.bigint(),
  wallMs: () => Date.now(),
};

const NS_PER_MS = 1_000_000n;

export class ClockTranslator {
  /** wall-clock ns minus monotonic ns, sampled by {@link resample}. */
  private offsetNs = 0n;

  constructor(private readonly clocks: Clocks = systemClocks) {
    this.resample();
  }

  /**
   * Samples the offset again. The offset moves when NTP slews or steps the wall clock; the
   * replicator resamples once per full sync rather than per session so that a batch is converted
   * consistently.
   */
  resample(): void {
    // Two reads of the monotonic clock around the wall clock bound the sampling delay.
    const before = this.clocks.monotonicNs();
    const wall = this.clocks.wallMs();
    const after = this.clocks.monotonicNs();
    this.offsetNs = BigInt(Math.round(wall)) * NS_PER_MS - (before + after) / 2n;
  }

  monotonicNowNs(): bigint {
    return this.clocks.monotonicNs();
  }

  /** Wall-clock milliseconds of a monotonic time of this node. */
  toWallMs(monotonicNs: bigint): number {
    return Number((monotonicNs + this.offsetNs) / NS_PER_MS);
  }

  /**
   * This node's monotonic time of a wall-clock time. A time in the future (the writer's clock ran
   * ahead) becomes now; a time before this node booted becomes 1 ns after boot, the oldest time the
   * kernel clock can express (0 may mean "unset" to the kernel), so the session ages from there.
   */
  toMonotonicNs(wallMs: number): bigint {
    const now = this.clocks.monotonicNs();
    const ns = BigInt(Math.round(wallMs)) * NS_PER_MS - this.offsetNs;
    if (ns > now) return now;
    if (ns < 1n) return 1n;
    return ns;
  }
}
