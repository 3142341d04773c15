import type { ESLint } from 'eslint';

export declare const FLOORS: readonly { units: readonly string[]; apart?: boolean; what: string }[];
declare const plugin: ESLint.Plugin;
export default plugin;
