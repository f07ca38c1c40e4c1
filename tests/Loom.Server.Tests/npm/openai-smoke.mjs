// Drives a running `loom serve` with the official `openai` npm package; prints what it got as one JSON line.
// Usage: node openai-smoke.mjs BASE_URL API_KEY MODEL
import OpenAI from 'openai';

const [baseURL, apiKey, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 60_000 });
const fail = (message) => { console.error(message); process.exit(1); };

const models = await client.models.list();
if (!models.data.some((m) => m.id === model)) fail(`model list lacks ${model}`);

const messages = [{ role: 'user', content: 'Once upon a time' }];
const chat = await client.chat.completions.create({ model, messages, max_tokens: 24, temperature: 0 });

let streamed = '';
let usage = null;
const stream = await client.chat.completions.create({
  model, messages, max_tokens: 24, temperature: 0, stream: true, stream_options: { include_usage: true },
});
for await (const chunk of stream) {
  streamed += chunk.choices[0]?.delta?.content ?? '';
  if (chunk.usage) usage = chunk.usage;
}

const completion = await client.completions.create({ model, prompt: 'Lily and Ben', max_tokens: 16, temperature: 0 });

const statusOf = async (request) => {
  try { await request(); return 200; } catch (e) { return e.status ?? -1; }
};
const wrongKey = await statusOf(() => new OpenAI({ baseURL, apiKey: 'wrong', maxRetries: 0 }).models.list());
const unknownModel = await statusOf(() => client.chat.completions.create({ model: 'no-such-model', messages }));
const badType = await statusOf(() => client.chat.completions.create({ model, messages, max_tokens: 'many' }));

console.log(JSON.stringify({
  chat: chat.choices[0].message.content,
  chatFinish: chat.choices[0].finish_reason,
  streamed,
  streamedCompletionTokens: usage?.completion_tokens ?? null,
  completion: completion.choices[0].text,
  wrongKey, unknownModel, badType,
}));
