// A sample client of the butler daemon, written as a launcher would against the generated
// typings (docs/api/butlerd.d.ts). tests/it/api.rs type-checks it with tsc --strict: a method,
// field or type that changes in the daemon's code changes the typings, and this file stops
// compiling. The @ts-expect-error lines fail too if the typings ever loosen (to `any`, say).

import type {
  ClientRequests,
  Methods,
  Notifications,
  RpcError,
  StreamEntry,
  UpdateHistoryEntry,
  UpdateOutcome,
} from "../../docs/api/butlerd";

/** One line out, lines in: TCP, a unix socket or a pipe, whichever the launcher uses. */
export interface LineTransport {
  send(line: string): void;
  onLine(listener: (line: string) => void): void;
}

type Handlers = {
  [M in keyof ClientRequests]: (params: ClientRequests[M]["params"]) => ClientRequests[M]["result"];
};

type Listener = <N extends keyof Notifications>(method: N, params: Notifications[N]) => void;

export class Client {
  private nextId = 1;
  private pending = new Map<number, { resolve(v: unknown): void; reject(e: RpcError): void }>();

  constructor(
    private transport: LineTransport,
    private handlers: Handlers,
    private listener: Listener,
  ) {
    transport.onLine((line) => this.receive(JSON.parse(line)));
  }

  call<M extends keyof Methods>(
    method: M,
    params: Methods[M]["params"],
  ): Promise<Methods[M]["result"]> {
    const id = this.nextId++;
    this.transport.send(JSON.stringify({ jsonrpc: "2.0", id, method, params }));
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve: (v) => resolve(v as Methods[M]["result"]), reject });
    });
  }

  private receive(msg: {
    id?: number;
    method?: string;
    params?: unknown;
    result?: unknown;
    error?: RpcError;
  }): void {
    if (msg.method !== undefined && msg.id !== undefined) {
      if (msg.method === "Test.Double") {
        const result = this.handlers["Test.Double"](msg.params as ClientRequests["Test.Double"]["params"]);
        this.transport.send(JSON.stringify({ jsonrpc: "2.0", id: msg.id, result }));
      }
      return;
    }
    if (msg.method !== undefined) {
      const method = msg.method as keyof Notifications;
      this.listener(method, msg.params as Notifications[typeof method]);
      return;
    }
    const waiter = msg.id === undefined ? undefined : this.pending.get(msg.id);
    if (waiter === undefined) return;
    this.pending.delete(msg.id!);
    if (msg.error) waiter.reject(msg.error);
    else waiter.resolve(msg.result);
  }
}

export async function launcher(transport: LineTransport, secret: string): Promise<string[]> {
  const seen: string[] = [];
  const client = new Client(
    transport,
    { "Test.Double": ({ number }) => ({ number: number * 2 }) },
    (method, params) => {
      seen.push(method);
      if (method === "Progress") {
        const p = params as Notifications["Progress"];
        const fraction: number = p.progress;
        seen.push(String(fraction));
      }
    },
  );
  const auth = await client.call("Meta.Authenticate", { secret });
  const ok: boolean = auth.ok;
  const version = await client.call("Version.Get", {});
  const label: string = version.versionString;
  const caps = await client.call("Meta.Capabilities", {});
  const protocol: number = caps.protocolVersion;
  const canFollow = caps.features.includes("streams-follow");

  const page = await client.call("Streams.Read", { path: "game/+/stdout", fromIndex: 0, limit: 10 });
  const entries: StreamEntry[] = page.entries;
  const text = entries.map((e) => e.text ?? "").join("");
  const next: number = page.nextIndex;

  const check = await client.call("Update.Check", { channel: "head" });
  const latest: string | null = check.latestVersion;
  const status = await client.call("Update.Status", {});
  const history: UpdateHistoryEntry[] = status.history;
  const outcome: UpdateOutcome | null = status.lastResult;
  const run = await client.call("Process.Run", { command: ["game", "--windowed"], env: { A: "1" } });
  const code: number = run.exitCode;
  const doubled = await client.call("Test.DoubleTwice", { number: 21 });
  const cancelled = await client.call("Operation.Cancel", { id: "install-42" });
  const did: boolean = cancelled.didCancel;
  const discovered = await client.call("rpc.discover", {});

  // @ts-expect-error: Streams.Read needs a path
  await client.call("Streams.Read", {});
  // @ts-expect-error: there is no such method
  await client.call("Nope.Nothing", {});
  // @ts-expect-error: a number is a number
  await client.call("Test.Double", { number: "2" });
  // @ts-expect-error: results are typed too
  const wrong: string = doubled.number;
  // @ts-expect-error: an outcome is one of a few words
  const badOutcome: UpdateOutcome = "exploded";

  return [
    String(ok), label, String(protocol), String(canFollow), text, String(next), String(latest),
    String(history.length), String(outcome), String(code), String(did), String(wrong),
    badOutcome, String(Object.keys(discovered).length),
  ];
}
