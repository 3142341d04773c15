import { readdirSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { attachTcAsync, tcxAttachOffThread, type TcDirection, type TcLink } from '../datapath/index.js';
import type { Logger } from '../logger.js';
import type { InterfaceMatcher } from '../net/interface-match.js';
import { withNetns } from '../net/netns.js';
import type { FlowDatapath } from '../datapath/flow/index.js';
import { LinkFollower, type FollowedNamespace } from './link-follower.js';

export interface FollowLinksConfig {
  netns?: string;
  netns_rescan_interval_ms: number;
  directions: TcDirection[];
  attach_mode: 'auto' | 'tcx' | 'clsact';
}

/**
 * Where a link of the flow programs is pinned: by ifindex, and by namespace inode outside the
 * agent's own namespace, so a rename or a name reused by another link never points a restarted
 * agent at the wrong link.
 */
export function linkPinName(ns: FollowedNamespace, ifindex: number, direction: TcDirection): string {
  return ns.label === undefined ? `tc-if${ifindex}-${direction}` : `tc-ns${ns.ino}-if${ifindex}-${direction}`;
}

/**
 * Attaches the datapath's programs to every link `matcher` selects and follows them (see
 * LinkFollower): returns at once, the attaches run off the event loop one link after another, and
 * `opened` settles when the links that exist now are attached. Pins left under <pinDir>/links by an
 * earlier run for links that are gone or no longer match are removed then, before anything
 * awaiting `opened` runs: removing the last reference of a TCX link detaches it.
 */
export function followLinks(
  dp: FlowDatapath,
  config: FollowLinksConfig,
  matcher: InterfaceMatcher,
  logger: Logger,
): LinkFollower {
  const linksDir = join(dp.pinDir, 'links');
  if (config.attach_mode !== 'clsact' && !tcxAttachOffThread()) {
    logger.warn(
      'dist/native/librxflow.so is missing: each tcx attach holds the event loop for a grace period of the kernel; build it with bash native/build.sh',
    );
  }
  const follower = LinkFollower.open({
    matcher,
    netns: config.netns,
    rescanIntervalMs: config.netns_rescan_interval_ms,
    logger,
    attach: async (ns, ifindex, ifname, signal) => {
      const links: TcLink[] = [];
      try {
        for (const direction of config.directions) {
          links.push(
            await attachTcAsync(dp.program(direction), ifname, direction, {
              mode: config.attach_mode,
              pinPath: join(linksDir, linkPinName(ns, ifindex, direction)),
              netns: ns.path,
              ifindex,
              signal,
            }),
          );
        }
      } catch (err) {
        if (links.some((l) => l.mode === 'clsact')) withNetns(ns.path, () => closeAll(links));
        else closeAll(links);
        throw err;
      }
      return links;
    },
  });
  // Registered first: runs before anything else awaiting `opened`.
  follower.opened.then(
    () => removeStalePins(follower, linksDir, logger),
    () => undefined,
  );
  return follower;
}

function closeAll(links: TcLink[]): void {
  for (const l of links) l.close();
}

function removeStalePins(follower: LinkFollower, linksDir: string, logger: Logger): void {
  // Closed meanwhile: it holds nothing, and the pins are its owner's to remove.
  if (follower.isClosed()) return;
  const kept = new Set(follower.tcLinks().map((l) => l.pinPath));
  let stale: string[] = [];
  try {
    stale = readdirSync(linksDir).filter((n) => !kept.has(join(linksDir, n)));
  } catch {
    // No links directory: nothing was ever pinned.
  }
  for (const name of stale) {
    try {
      unlinkSync(join(linksDir, name));
      logger.info({ pin: join(linksDir, name) }, 'removed the pin of a link no longer followed');
    } catch (err) {
      logger.warn({ err, pin: join(linksDir, name) }, 'could not remove a stale link pin');
    }
  }
}
