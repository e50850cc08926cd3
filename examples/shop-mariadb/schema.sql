-- The demo shop (examples/shop/schema.sql) in MySQL/MariaDB dialect:
-- categories, products, and reviews of products. For the stack's `shop`
-- database on MariaDB (scripts/stack up --with mariadb); idempotent:
--   mariadb --protocol=tcp -h 127.0.0.1 -P 3306 -u cdc -pcdc shop < examples/shop-mariadb/schema.sql
--
-- No per-table setting replaces PostgreSQL's REPLICA IDENTITY FULL here: the
-- server logs whole old rows for every table when binlog_row_image = FULL
-- (scripts/stack starts MariaDB so), and `cdc-invalidator check` verifies it
-- for the entities declared replica_identity = "full".

CREATE TABLE IF NOT EXISTS categories (
    id          INT          PRIMARY KEY,
    name        VARCHAR(200) NOT NULL,
    parent_id   INT          NULL,
    FOREIGN KEY (parent_id) REFERENCES categories (id)
);

CREATE TABLE IF NOT EXISTS products (
    id          INT           PRIMARY KEY,
    category_id INT           NOT NULL,
    sku         VARCHAR(64)   NOT NULL UNIQUE,
    name        VARCHAR(200)  NOT NULL,
    price       DECIMAL(10,2) NOT NULL,
    description TEXT,
    updated_at  TIMESTAMP(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    FOREIGN KEY (category_id) REFERENCES categories (id)
);

CREATE TABLE IF NOT EXISTS reviews (
    id          BIGINT   PRIMARY KEY,
    product_id  INT      NOT NULL,
    user_id     BIGINT   NOT NULL,
    rating      SMALLINT NOT NULL CHECK (rating BETWEEN 1 AND 5),
    body        TEXT,
    FOREIGN KEY (product_id) REFERENCES products (id)
);
