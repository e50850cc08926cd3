import io.github.cdcinvalidator.cache.Cache;
import io.github.cdcinvalidator.cache.CacheOptions;
import io.github.cdcinvalidator.cache.GetOptions;
import io.github.cdcinvalidator.cache.Got;
import io.lettuce.core.RedisClient;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.UUID;

/**
 * The "packaged" check of readers/spec.md section 13: run by run-tests with the built
 * jar and its runtime dependencies alone on the class path (no target/classes), so the
 * Lua scripts must travel inside the jar. Exits 0 when a get loads, then hits.
 */
public final class Packaged {
  public static void main(String[] args) {
    RedisClient client = RedisClient.create(args[0]);
    try (Cache cache = Cache.create(client, CacheOptions.defaults().prefix("packaged_" + UUID.randomUUID() + ":"))) {
      GetOptions options = GetOptions.ttl(Duration.ofMinutes(1));
      Got first = cache.get("product:1", options, () -> "from the jar".getBytes(StandardCharsets.UTF_8));
      Got second = cache.get("product:1", options, () -> "never".getBytes(StandardCharsets.UTF_8));
      if (first.hit() || !second.hit() || !second.text().equals("from the jar")) {
        System.err.println("packaged: unexpected " + first + " then " + second);
        System.exit(1);
      }
      System.out.println("packaged: the jar alone served a get (" + second.dataKey() + ")");
    } finally {
      client.shutdown();
    }
  }
}
