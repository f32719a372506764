// Runs one call of the official @trigger.dev/sdk against a Mollifier server and prints the outcome as JSON.
//   MOLLIFIER_URL=http://127.0.0.1:8000 MOLLIFIER_KEY=tr_dev_… node sdk.mjs <op> '<json args>'
// Prints {"ok": true, "result": …} or {"ok": false, "error": {"name", "status", "message"}}; exits 0 either way,
// so the pytest side asserts on what the SDK itself returned or threw.
import { configure, tasks, runs, batch, idempotencyKeys } from "@trigger.dev/sdk";
import { apiClientManager } from "@trigger.dev/core/v3";

const [, , op, argsJson] = process.argv;
const args = JSON.parse(argsJson || "{}");
configure({ baseURL: process.env.MOLLIFIER_URL, secretKey: process.env.MOLLIFIER_KEY });
const once = { retry: { maxAttempts: 1 } };

const ops = {
  trigger: (a) => tasks.trigger(a.task, a.payload, a.options ?? {}, a.retry === false ? undefined : once),
  triggerMany: async (a) => {
    const handles = [];
    const retry = a.retry === false ? undefined : once; // retry: false → the SDK's own retries (503 x-should-retry)
    for (let i = 0; i < a.count; i++) handles.push(await tasks.trigger(a.task, { i }, a.options ?? {}, retry));
    return handles.map((h) => h.id);
  },
  retrieve: (a) => runs.retrieve(a.id, once),
  cancel: (a) => runs.cancel(a.id),
  batch: (a) =>
    batch.trigger(
      Array.from({ length: a.count }, (_, i) => ({ id: a.task, payload: { i }, options: a.itemOptions ?? {} })),
      a.options ?? {},
    ),
  list: async (a) => {
    const out = [];
    for await (const run of runs.list(a.query ?? {})) {
      out.push(run);
      if (a.max && out.length >= a.max) break;
    }
    return out;
  },
  // Outside a task, "run" scope has no parent to hash with; "global" hashes the key alone, as trigger did.
  resetKey: (a) => idempotencyKeys.reset(a.task, a.key, { scope: a.scope ?? "global" }),
};

// Packets, reschedule, replay, metadata (docs/api.md#packets). Big payloads are made here, not passed in argv.
const client = () => apiClientManager.clientOrThrow();
const blob = (bytes) => "x".repeat(bytes);
Object.assign(ops, {
  // A payload of `bytes` characters in one string field: the SDK offloads it (≥ 128 KiB) through /api/v2/packets.
  triggerBig: (a) => tasks.trigger(a.task, { blob: blob(a.bytes), n: a.bytes }, a.options ?? {}, once),
  // What retrieve resolved, without printing megabytes: the payload's size and whether it came by presigned URL.
  retrieveBig: async (a) => {
    const run = await runs.retrieve(a.id, once);
    return {
      id: run.id, status: run.status, presigned: !!run.payloadPresignedUrl,
      n: run.payload?.n, size: run.payload?.blob?.length, intact: run.payload?.blob === blob(run.payload?.n ?? -1),
    };
  },
  downloadUrl: (a) => client().getPayloadUrl(a.path, once),
  runPacketUrl: (a) => client().getRunPacketUrl(a.id, "payload", a.path ?? "none", once),
  reschedule: (a) => runs.reschedule(a.id, { delay: a.delay }, once),
  replay: (a) => (a.body ? runs.replay(a.id, a.body, once) : runs.replay(a.id, once)),
  updateMetadata: (a) => client().updateRunMetadata(a.id, a.body, once),
  getMetadata: (a) => client().getRunMetadata(a.id, once),
  // One writer of a concurrency test: `count` updates in a row, each an increment and an append.
  metadataWriter: async (a) => {
    for (let i = 0; i < a.count; i++) {
      await client().updateRunMetadata(a.id, {
        operations: [{ type: "increment", key: "n", value: 1 }, { type: "append", key: "log", value: `${a.writer}-${i}` }],
      });
    }
    return a.count;
  },
});

// Run lists page by page and bulk actions (tests/sdk/test_sdk_bulk.py).
Object.assign(ops, {
  // Each page's ids, walking `next` with a pause between pages (entries may drain meanwhile).
  listPages: async (a) => {
    const pages = [];
    let page = await runs.list({ ...(a.query ?? {}), limit: a.limit });
    for (;;) {
      pages.push(page.data.map((r) => ({ id: r.id, createdAt: r.createdAt, status: r.status })));
      if (!page.hasNextPage()) return pages;
      if (a.pauseMs) await new Promise((r) => setTimeout(r, a.pauseMs));
      page = await page.getNextPage();
    }
  },
  bulkCancel: (a) => runs.bulk.cancel(a.body),
  bulkReplay: (a) => runs.bulk.replay(a.body),
  bulkRetrieve: (a) => runs.bulk.retrieve(a.id),
  bulkAbort: (a) => runs.bulk.abort(a.id),
  bulkPoll: (a) => runs.bulk.poll(a.id, { pollIntervalMs: a.pollIntervalMs ?? 200 }),
  bulkList: async (a) => {
    const out = [];
    for await (const action of runs.bulk.list({ limit: a.limit })) out.push(action);
    return out;
  },
});

try {
  if (!ops[op]) throw new Error(`unknown op ${op}`);
  const result = await ops[op](args);
  process.stdout.write(JSON.stringify({ ok: true, result }) + "\n");
} catch (err) {
  process.stdout.write(
    JSON.stringify({ ok: false, error: { name: err?.constructor?.name, status: err?.status, message: String(err?.message ?? err) } }) + "\n",
  );
}
