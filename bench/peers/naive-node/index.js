// The naive peer: cache invalidation from Debezium events as the seed design
// (shared/reference/seed-design.txt) has teams write it today. A kafkajs
// consumer hands each event to an invalidation handler that INCRs the row's
// version key through ioredis, one command per event, awaited before the
// next event: the design's `invalidateVersion()` (`redis.incr(versionKey)`).
// No position guard, no coalescing, no batching.
//
//   node index.js --topic T [--brokers 127.0.0.1:9092] [--redis-port 6390] [--group G]
//
// It consumes the topic from the beginning until it reaches the end offsets
// it read at start, prints one JSON line (events, seconds from the first
// event to the last, CPU seconds, peak RSS), and exits.
'use strict';

const { Kafka, logLevel } = require('kafkajs');
const { Redis } = require('ioredis');

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

const topic = arg('topic');
const brokers = arg('brokers', '127.0.0.1:9092').split(',');
const groupId = arg('group', `naive-node-${process.pid}-${Date.now()}`);
const timeoutMs = Number(arg('timeout-s', '900')) * 1000;
if (!topic) {
  console.error('usage: node index.js --topic T [--brokers B] [--redis-port P] [--group G]');
  process.exit(2);
}

// The seed design's client settings.
const redis = new Redis({
  host: arg('redis-host', '127.0.0.1'),
  port: parseInt(arg('redis-port', '6390'), 10),
  maxRetriesPerRequest: 3,
  retryStrategy: (times) => Math.min(times * 50, 2000),
});

// The handler: parse the Debezium event, name the row, bump its version.
async function invalidate(message) {
  if (message.value === null) return false; // tombstone after a delete
  const event = JSON.parse(message.value.toString());
  const change = event.payload !== undefined ? event.payload : event; // JsonConverter {schema, payload}
  const row = change.after || change.before;
  if (!row) return false;
  const versionKey = `app:version:${change.source.table}:${row.id}`;
  await redis.incr(versionKey);
  return true;
}

async function main() {
  const kafka = new Kafka({ clientId: 'naive-node', brokers, logLevel: logLevel.WARN });
  const admin = kafka.admin();
  await admin.connect();
  const ends = await admin.fetchTopicOffsets(topic);
  await admin.disconnect();
  const remaining = new Map();
  let expected = 0;
  for (const p of ends) {
    const high = Number(p.high);
    if (high > 0) remaining.set(p.partition, high);
    expected += high;
  }

  const consumer = kafka.consumer({ groupId });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });

  let events = 0;
  let commands = 0;
  let first = null;
  let finished = false;
  const timer = setTimeout(() => {
    console.error(`[naive-node] timed out after ${events} of ${expected} events`);
    process.exit(1);
  }, timeoutMs);

  const done = new Promise((resolve) => {
    consumer.run({
      eachMessage: async ({ partition, message }) => {
        if (first === null) first = process.hrtime.bigint();
        if (await invalidate(message)) commands += 1;
        events += 1;
        const offset = Number(message.offset);
        if (remaining.has(partition) && offset + 1 >= remaining.get(partition)) {
          remaining.delete(partition);
          if (remaining.size === 0 && !finished) {
            finished = true;
            resolve(process.hrtime.bigint());
          }
        }
      },
    });
    if (remaining.size === 0) resolve(process.hrtime.bigint());
  });

  const last = await done;
  clearTimeout(timer);
  const seconds = first === null ? 0 : Number(last - first) / 1e9;
  const usage = process.resourceUsage();
  const cpu = (usage.userCPUTime + usage.systemCPUTime) / 1e6;
  console.log(JSON.stringify({
    events,
    seconds,
    events_per_second: events / seconds,
    redis_commands: commands,
    cpu_seconds: cpu,
    cpu_seconds_per_million: (cpu / events) * 1e6,
    peak_rss_mib: usage.maxRSS / 1024,
  }));
  await consumer.disconnect();
  await redis.quit();
  process.exit(0);
}

main().catch((err) => {
  console.error('[naive-node] failed:', err);
  process.exit(1);
});
