-- Header names and values as the producer wrote them (any bytes; the jsonb
-- `headers` column cannot hold a NUL or a name that is not UTF-8). The jsonb
-- column stays as a readable, escaped view; these two arrays are the record.
ALTER TABLE cdc_dead_letters ADD COLUMN IF NOT EXISTS header_names bytea[];
ALTER TABLE cdc_dead_letters ADD COLUMN IF NOT EXISTS header_values bytea[];
