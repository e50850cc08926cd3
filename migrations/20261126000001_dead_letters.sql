-- Records the daemon could not decode or render. One row per Kafka record:
-- redelivery of the same record bumps `attempts` instead of adding a row.
CREATE TABLE IF NOT EXISTS cdc_dead_letters (
    id            bigserial   PRIMARY KEY,
    topic         text        NOT NULL,
    "partition"   integer     NOT NULL,
    "offset"      bigint      NOT NULL,
    key           bytea,
    value         bytea,
    headers       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    error_kind    text        NOT NULL,
    error_detail  text        NOT NULL,
    stage         text        NOT NULL,
    first_seen    timestamptz NOT NULL DEFAULT now(),
    last_seen     timestamptz NOT NULL DEFAULT now(),
    attempts      integer     NOT NULL DEFAULT 1,
    replayed_at   timestamptz,
    UNIQUE (topic, "partition", "offset")
);

CREATE INDEX IF NOT EXISTS cdc_dead_letters_pending
    ON cdc_dead_letters (first_seen) WHERE replayed_at IS NULL;
