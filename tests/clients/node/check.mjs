// The official `openai` Node client against a running loraplex server: models, completions (logprobs,
// n, a list of prompts), chat (JSON schema output), streaming with usage, and a typed error.
// Usage: node check.mjs BASE_URL PROMPT LABELS_JSON  (prints one JSON object; tests/integration/test_clients.py reads it)
import OpenAI from "openai";

const [baseURL, prompt, labels] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "unused", maxRetries: 0, timeout: 120000 });
const out = {};

out.models = (await client.models.list()).data.map((m) => m.id);
const c = await client.completions.create({ model: "intent", prompt, max_tokens: 8, temperature: 0, logprobs: 2 });
out.completion = { text: c.choices[0].text, tokens: c.choices[0].logprobs.tokens, usage: c.usage, routing: c.routing };
const many = await client.completions.create({ model: "intent", prompt: [prompt, prompt], n: 2, max_tokens: 4, temperature: 0.8, seed: 1 });
out.many = many.choices.map((ch) => ch.index);
const schema = {
  type: "object",
  properties: { intent: { enum: JSON.parse(labels) } },
  required: ["intent"],
  additionalProperties: false,
};
const chat = await client.chat.completions.create({
  model: "intent",
  messages: [{ role: "user", content: [{ type: "text", text: prompt }] }],
  max_tokens: 40,
  temperature: 0,
  response_format: { type: "json_schema", json_schema: { name: "intent", schema } },
});
out.chat = { content: chat.choices[0].message.content, finish: chat.choices[0].finish_reason };
let streamed = "";
let usage = null;
const stream = await client.chat.completions.create({
  model: "intent", messages: [{ role: "user", content: prompt }], max_tokens: 8, temperature: 0,
  stream: true, stream_options: { include_usage: true },
});
for await (const chunk of stream) {
  if (chunk.choices.length) streamed += chunk.choices[0].delta.content ?? "";
  if (chunk.usage) usage = chunk.usage;
}
out.stream = { text: streamed, usage };
try {
  await client.completions.create({ model: "no-such-adapter", prompt, max_tokens: 2 });
  out.error = null;
} catch (e) {
  out.error = { status: e.status, name: e.constructor.name, message: e.message };
}
console.log(JSON.stringify(out));
