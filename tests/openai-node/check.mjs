// Exercises a Switchyard trunk's OpenAI-compatible API with the official
// openai npm package: models, chat (plain, streamed with usage, JSON schema),
// completions, the Responses API with previous_response_id, and an error.
// Run by trunk-node's TestOpenAINodeSDK with SWITCHYARD_BASE_URL,
// SWITCHYARD_API_KEY and SWITCHYARD_MODEL set; prints "ok" on success.
import OpenAI from "openai";
import assert from "node:assert/strict";

const client = new OpenAI({ baseURL: process.env.SWITCHYARD_BASE_URL, apiKey: process.env.SWITCHYARD_API_KEY, maxRetries: 0 });
const model = process.env.SWITCHYARD_MODEL;

const models = await client.models.list();
assert.equal(models.data[0].id, model);

const messages = [{ role: "user", content: "Hello" }];
const chat = await client.chat.completions.create({ model, messages, max_tokens: 8, temperature: 0 });
assert.equal(chat.choices[0].message.role, "assistant");
assert.ok(chat.usage.completion_tokens > 0);

let streamed = "";
let usage = null;
const stream = await client.chat.completions.create({ model, messages, max_tokens: 8, temperature: 0, stream: true, stream_options: { include_usage: true } });
for await (const chunk of stream) {
  if (chunk.choices.length > 0) streamed += chunk.choices[0].delta.content ?? "";
  if (chunk.usage) usage = chunk.usage;
}
assert.equal(streamed, chat.choices[0].message.content);
assert.equal(usage.completion_tokens, chat.usage.completion_tokens);

const schema = { type: "object", properties: { ok: { type: "boolean" }, color: { enum: ["red", "blue"] } }, required: ["ok", "color"], additionalProperties: false };
const structured = await client.chat.completions.create({
  model, messages, max_tokens: 64, temperature: 1, seed: 3,
  response_format: { type: "json_schema", json_schema: { name: "x", schema, strict: true } },
});
const doc = JSON.parse(structured.choices[0].message.content);
assert.equal(typeof doc.ok, "boolean");
assert.ok(["red", "blue"].includes(doc.color));

const completion = await client.completions.create({ model, prompt: "Once upon", max_tokens: 4, temperature: 0 });
assert.equal(typeof completion.choices[0].text, "string");

const first = await client.responses.create({ model, input: "Hi", max_output_tokens: 4, temperature: 0 });
const second = await client.responses.create({ model, input: "More", previous_response_id: first.id, max_output_tokens: 4, temperature: 0 });
assert.ok(second.usage.input_tokens_details.cached_tokens > 0, "the follow-up continues the kept session");
await client.responses.delete(second.id);

await assert.rejects(client.chat.completions.create({ model: "nope", messages }), (err) => err.status === 404 && err.error?.type !== undefined);
console.log("ok");
