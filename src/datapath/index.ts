export { DatapathError, type DatapathErrorCode } from './errors.js';
export { setLibbpfLogger } from './libbpf.js';
export { Collection, ObjectSpec, Program, type LoadOptions, type TestRunResult } from './object.js';
export { BpfMap, possibleCpus, type DrainOptions, type DrainResult } from './map.js';
export {
  attachTc,
  attachTcAsync,
  tcxAttachOffThread,
  type AsyncAttachOptions,
  type AttachOptions,
  type TcDirection,
  type TcLink,
} from './link.js';
export { RingBufferReader, type RecordHandler } from './ringbuf.js';
export { checkStructLayout, readStructLayout, type StructField, type StructLayout } from './btf.js';
