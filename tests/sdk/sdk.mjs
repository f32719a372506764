// Runs one call of the official @trigger.dev/sdk against a Mollifier server and prints the outcome as JSON.
//   MOLLIFIER_URL=http://127.0.0.1:8000 MOLLIFIER_KEY=tr_dev_… node sdk.mjs <op> '<json args>'
// Prints {"ok": true, "result": …} or {"ok": false, "error": {"name", "status", "message"}}; exits 0 either way,
// so the pytest side asserts on what the SDK itself returned or threw.
import { configure, tasks, runs, batch, idempotencyKeys } from "@trigger.dev/sdk";

const [, , op, argsJson] = process.argv;
const args = JSON.parse(argsJson || "{}");
configure({ baseURL: process.env.MOLLIFIER_URL, secretKey: process.env.MOLLIFIER_KEY });
const once = { retry: { maxAttempts: 1 } };

const ops = {
  trigger: (a) => tasks.trigger(a.task, a.payload, a.options ?? {}, a.retry === false ? undefined : once),
  triggerMany: async (a) => {
    const handles = [];
    for (let i = 0; i < a.count; i++) handles.push(await tasks.trigger(a.task, { i }, a.options ?? {}, once));
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

try {
  if (!ops[op]) throw new Error(`unknown op ${op}`);
  const result = await ops[op](args);
  process.stdout.write(JSON.stringify({ ok: true, result }) + "\n");
} catch (err) {
  process.stdout.write(
    JSON.stringify({ ok: false, error: { name: err?.constructor?.name, status: err?.status, message: String(err?.message ?? err) } }) + "\n",
  );
}
