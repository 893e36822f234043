// node-postgres (npm `pg`) against Velocity: connect, introspect, typed rows, transactions,
// SUBSCRIBE through DECLARE/FETCH. Run by tests/clients.rs with PGHOST/PGPORT/PGUSER/PGDATABASE set.
'use strict';
const assert = require('node:assert/strict');
const { Client } = require('pg');

async function main() {
  const client = new Client();
  await client.connect();
  const version = (await client.query('SELECT version()')).rows[0].version;
  assert.match(version, /Velocity/, 'version() names Velocity');
  await client.query("SET application_name = 'node-pg'");

  await client.query(`CREATE TABLE readings (id BIGINT PRIMARY KEY, sensor INT, value NUMERIC(8,3),
      temp DOUBLE PRECISION, label TEXT, ok BOOLEAN, day DATE, at TIMESTAMP, at_tz TIMESTAMPTZ)`);
  // Parameterized: the extended protocol.
  await client.query('INSERT INTO readings VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)',
    [1, 7, '1.250', 21.5, 'north', true, '2024-03-04', '2024-03-04 05:06:07', '2024-03-04T05:06:07Z']);
  await client.query('INSERT INTO readings (id, sensor) VALUES (2, 7)');
  await client.query('CREATE MATERIALIZED VIEW per_sensor AS SELECT sensor, count(*) AS n, max(temp) AS hottest FROM readings GROUP BY sensor');

  const res = await client.query('SELECT * FROM readings ORDER BY id');
  assert.equal(res.rows.length, 2);
  const r = res.rows[0];
  assert.equal(r.id, '1'); // int8 arrives as a string in node-postgres
  assert.equal(r.sensor, 7);
  assert.equal(r.value, '1.250');
  assert.equal(r.temp, 21.5);
  assert.equal(r.label, 'north');
  assert.equal(r.ok, true);
  assert.ok(r.day instanceof Date, `date: ${r.day}`);
  assert.ok(r.at instanceof Date, `timestamp: ${r.at}`);
  assert.equal(r.at_tz.toISOString(), '2024-03-04T05:06:07.000Z');
  const nulls = res.rows[1];
  for (const k of ['value', 'temp', 'label', 'ok', 'day', 'at', 'at_tz']) assert.equal(nulls[k], null, k);
  const types = res.fields.map((f) => f.dataTypeID);
  assert.deepEqual(types, [20, 23, 1700, 701, 25, 16, 1082, 1114, 1184], 'column type oids');

  // Transactions as drivers wrap them.
  await client.query('BEGIN');
  await client.query('INSERT INTO readings (id, sensor, temp) VALUES (3, 8, 30.0)');
  await client.query('COMMIT');
  await client.query('BEGIN');
  await client.query('INSERT INTO readings (id, sensor, temp) VALUES (4, 9, 1.0)');
  await client.query('ROLLBACK');
  const view = await client.query('SELECT sensor, n, hottest FROM per_sensor ORDER BY sensor');
  assert.deepEqual(view.rows, [{ sensor: 7, n: '2', hottest: 21.5 }, { sensor: 8, n: '1', hottest: 30 }]);

  // Introspection that GUI tools send.
  const cols = await client.query(`SELECT column_name, data_type FROM information_schema.columns
      WHERE table_name = 'readings' ORDER BY ordinal_position`);
  assert.deepEqual(cols.rows.map((c) => c.column_name), ['id', 'sensor', 'value', 'temp', 'label', 'ok', 'day', 'at', 'at_tz']);

  // SUBSCRIBE through a cursor.
  await client.query('DECLARE feed CURSOR FOR SUBSCRIBE per_sensor');
  const snap = await client.query("FETCH ALL feed WITH (timeout = '1s')");
  assert.equal(snap.rows.length, 2, 'snapshot');
  const writer = new Client();
  await writer.connect();
  await writer.query('INSERT INTO readings (id, sensor, temp) VALUES (5, 9, 2.0)');
  await writer.end();
  const changes = await client.query("FETCH ALL feed WITH (timeout = '5s')");
  assert.equal(changes.rows.length, 1, JSON.stringify(changes.rows));
  assert.equal(String(changes.rows[0].diff), '1');
  assert.equal(changes.rows[0].sensor, 9);
  await client.query('CLOSE feed');
  await client.end();
  console.log('node-postgres: all checks passed');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
