package cdccache_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cdc-invalidator/cdc-invalidator/readers/go/cdccache"
)

// A product page cached under a key rendered like the daemon renders its
// template, depending on the product and its category.
func Example() {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	cache, err := cdccache.New(rdb, cdccache.WithName("catalog"))
	if err != nil {
		panic(err)
	}
	defer cache.Close()

	var db *sql.DB // the service's database
	productKey, _, _ := cdccache.Key("product:{id}", map[string]any{"id": int64(42)})
	res, err := cache.Get(ctx, "page:"+productKey, func(ctx context.Context) ([]byte, error) {
		var page []byte
		err := db.QueryRowContext(ctx, "SELECT render_page($1)", 42).Scan(&page)
		return page, err
	},
		cdccache.TTL(10*time.Minute),
		cdccache.Deps(productKey, "category:3"),
		cdccache.Eventual(500*time.Millisecond),
	)
	switch {
	case errors.Is(err, cdccache.ErrLeaseTimeout):
		// Another process's load took longer than the wait timeout.
	case err != nil:
		panic(err)
	default:
		fmt.Println(res.DataKey, res.Hit, res.Stale, len(res.Value))
	}
}
