// The openai npm package against a real `rbee serve` (see ../run.sh).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

const BASE = process.env.RBEE_BASE_URL;
const MODEL = process.env.RBEE_MODEL;
const client = new OpenAI({ baseURL: BASE, apiKey: 'sk-anything', maxRetries: 0, timeout: 120_000 });

async function metric(sample) {
  const text = await (await fetch(BASE.replace(/\/v1$/, '') + '/metrics')).text();
  const line = text.split('\n').find((l) => l.startsWith(sample + ' '));
  return line === undefined ? undefined : Number(line.split(' ').pop());
}

test('lists the fixture', async () => {
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  assert.ok(ids.includes(MODEL));
});

test('chat, whole and streamed with usage', async () => {
  const r = await client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'Say hi.' }], max_tokens: 6 });
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);

  const stream = await client.chat.completions.create({
    model: MODEL,
    messages: [{ role: 'user', content: 'Name a fruit.' }],
    max_tokens: 6,
    stream: true,
    stream_options: { include_usage: true },
  });
  const chunks = [];
  for await (const c of stream) chunks.push(c);
  assert.equal(chunks[0].choices[0].delta.role, 'assistant');
  const last = chunks.at(-1);
  assert.deepEqual(last.choices, []);
  assert.equal(last.usage.completion_tokens, 6);
  assert.equal(chunks.filter((c) => c.choices[0]?.finish_reason).length, 1);
});

test('stop, seed and max_tokens', async () => {
  const stopped = await client.completions.create({ model: MODEL, prompt: 'The capital of France is', max_tokens: 10, temperature: 0, stop: 'capital' });
  assert.equal(stopped.choices[0].text, ' the ');
  assert.equal(stopped.choices[0].finish_reason, 'stop');
  const seeded = () => client.completions.create({ model: MODEL, prompt: 'Bees are', max_tokens: 10, temperature: 1, seed: 3 });
  assert.equal((await seeded()).choices[0].text, (await seeded()).choices[0].text);
  const short = await client.completions.create({ model: MODEL, prompt: 'Bees are', max_tokens: 3 });
  assert.equal(short.choices[0].finish_reason, 'length');
});

test('error classes', async () => {
  await assert.rejects(
    client.chat.completions.create({ model: 'no-such-model', messages: [{ role: 'user', content: 'x' }] }),
    (e) => e instanceof OpenAI.NotFoundError && e.code === 'model_not_found',
  );
  await assert.rejects(
    client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'x' }], top_p: 2 }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === 'top_p',
  );
});

test('four concurrent streams', async () => {
  const one = async (i) => {
    const s = await client.chat.completions.create({
      model: MODEL, messages: [{ role: 'user', content: `Count to ${i + 2}.` }], max_tokens: 5, stream: true, stream_options: { include_usage: true },
    });
    let usage;
    for await (const c of s) if (c.usage) usage = c.usage;
    return usage.completion_tokens;
  };
  assert.deepEqual(await Promise.all([0, 1, 2, 3].map(one)), [5, 5, 5, 5]);
});

test('aborting mid-stream frees the slot', async () => {
  const busy = `rbee_slots_busy{model="${MODEL}"}`;
  const stream = await client.chat.completions.create({
    model: MODEL, messages: [{ role: 'user', content: 'Write a very long story.' }], max_tokens: 4000, stream: true,
  });
  let n = 0;
  for await (const _ of stream) {
    if (++n === 3) break; // leaving the loop aborts the request
  }
  const deadline = Date.now() + 30_000;
  while ((await metric(busy)) !== 0) {
    assert.ok(Date.now() < deadline, 'the slot stayed busy after the client left');
    await new Promise((r) => setTimeout(r, 20));
  }
});

test('structured output: a json_schema answer parses and matches', async () => {
  const schema = {
    type: 'object',
    properties: { fruit: { type: 'string' }, colour: { enum: ['red', 'yellow', 'green', 'orange'] } },
    required: ['fruit', 'colour'],
    additionalProperties: false,
  };
  const r = await client.chat.completions.create({
    model: process.env.RBEE_CHAT_MODEL,
    messages: [{ role: 'user', content: 'Name a fruit and its colour.' }],
    response_format: { type: 'json_schema', json_schema: { name: 'fruit', schema, strict: true } },
    max_tokens: 80,
    temperature: 0,
  });
  assert.equal(r.choices[0].finish_reason, 'stop');
  const v = JSON.parse(r.choices[0].message.content);
  assert.deepEqual(Object.keys(v), ['fruit', 'colour']);
  assert.ok(['red', 'yellow', 'green', 'orange'].includes(v.colour));
});

test('tool calls: a required call names an offered tool with arguments that parse', async () => {
  const tools = [
    {
      type: 'function',
      function: {
        name: 'get_weather',
        description: 'The current weather in a city',
        parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'], additionalProperties: false },
      },
    },
  ];
  const r = await client.chat.completions.create({
    model: process.env.RBEE_TOOL_MODEL,
    messages: [{ role: 'user', content: 'What is the weather in Rome?' }],
    tools,
    tool_choice: 'required',
    temperature: 0,
    max_tokens: 80,
  });
  assert.equal(r.choices[0].finish_reason, 'tool_calls');
  const calls = r.choices[0].message.tool_calls;
  assert.ok(calls.length >= 1);
  for (const c of calls) {
    assert.equal(c.function.name, 'get_weather');
    assert.equal(typeof JSON.parse(c.function.arguments).city, 'string');
  }
});
