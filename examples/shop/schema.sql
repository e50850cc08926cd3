-- The demo shop: categories, products, and reviews of products.
-- Applied by scripts/demo to the stack's `shop` database (idempotent).

CREATE TABLE IF NOT EXISTS categories (
    id          integer PRIMARY KEY,
    name        text    NOT NULL,
    parent_id   integer REFERENCES categories (id)
);

CREATE TABLE IF NOT EXISTS products (
    id          integer PRIMARY KEY,
    category_id integer NOT NULL REFERENCES categories (id),
    sku         text    NOT NULL UNIQUE,
    name        text    NOT NULL,
    price       numeric(10, 2) NOT NULL,
    description text,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS reviews (
    id          bigint  PRIMARY KEY,
    product_id  integer NOT NULL REFERENCES products (id),
    user_id     bigint  NOT NULL,
    rating      smallint NOT NULL CHECK (rating BETWEEN 1 AND 5),
    body        text
);

-- The graph renders keys from the old row as well as the new one
-- (`category:{category_id}:products` must be bumped for the category a product
-- leaves). PostgreSQL only logs the old row in full under REPLICA IDENTITY FULL;
-- with DEFAULT, Debezium's `before` is null on updates and the daemon has to
-- escalate to the namespace instead.
ALTER TABLE products REPLICA IDENTITY FULL;
ALTER TABLE reviews  REPLICA IDENTITY FULL;
