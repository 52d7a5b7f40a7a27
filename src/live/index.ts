/**
 * The live-migration transport (docs/live-transport.md): URIs, a one-connection listener, a
 * connector, and byte channels over the library's own sockets (FdChannel, which the native pump
 * can drive) or over Node streams (StreamChannel: TLS, or a Duplex the VMM hands in).
 */
export { DEFAULT_IDLE_TIMEOUT_MS, FdChannel, StreamChannel, canLend } from './channel';
export type { Channel, ChannelOptions, LendOptions, LendingChannel, ReadOptions, StreamChannelOptions, WaitOptions } from './channel';
export { DEFAULT_CONNECT_TIMEOUT_MS, connect, openChannel } from './connect';
export type { ConnectOptions, OpenChannelOptions } from './connect';
export { DEFAULT_HANDSHAKE_TIMEOUT_MS, Listener, MAX_CONCURRENT_HANDSHAKES, listen } from './listener';
export type { AcceptOptions, ListenOptions, ListenerEvents, RefusedPeer } from './listener';
export { POLL_SLICE_MS } from './socket';
export { loadTlsCredentials } from './tls';
export type { TlsCredentials, TlsOptions } from './tls';
export { formatUri, parseUri } from './uri';
export type { TransportUri, UriRole } from './uri';
