// The `main` of a Kroxylicious proxy for the benchmark: `kroxylicious-app`, where upstream keeps
// its own, is not on Maven Central. Run as a single-file source program:
// `java -cp '<lib>/*' Launcher.java CONFIG.yaml`.

import java.nio.file.Files;
import java.nio.file.Path;

import io.kroxylicious.proxy.KafkaProxy;
import io.kroxylicious.proxy.config.ConfigParser;
import io.kroxylicious.proxy.internal.config.Features;

public class Launcher {
    public static void main(String[] args) throws Exception {
        if (args.length != 1) {
            System.err.println("usage: Launcher CONFIG.yaml");
            System.exit(2);
        }
        ConfigParser parser = new ConfigParser();
        var config = parser.parseConfiguration(Files.readString(Path.of(args[0])));
        try (KafkaProxy proxy = new KafkaProxy(parser, config, Features.defaultFeatures())) {
            proxy.startup();
            proxy.block();
        }
    }
}
