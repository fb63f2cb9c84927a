// Sends one tagged span and one tagged log record with Node's stock OTLP
// exporters. Usage: node send.mjs <base-url> <json|proto> <gzip|none> <user>
import { trace } from "@opentelemetry/api";
import { OTLPLogExporter } from "@opentelemetry/exporter-logs-otlp-http";
import { OTLPTraceExporter as JsonTraceExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { OTLPTraceExporter as ProtoTraceExporter } from "@opentelemetry/exporter-trace-otlp-proto";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { LoggerProvider, SimpleLogRecordProcessor } from "@opentelemetry/sdk-logs";
import { BasicTracerProvider, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";

const [base, encoding, compression, user] = process.argv.slice(2);
const options = { compression: compression === "gzip" ? "gzip" : "none" };
const resource = resourceFromAttributes({ "service.name": "node-shop" });
const Exporter = encoding === "proto" ? ProtoTraceExporter : JsonTraceExporter;
const tracerProvider = new BasicTracerProvider({
  resource,
  spanProcessors: [new SimpleSpanProcessor(new Exporter({ url: `${base}/v1/traces`, ...options }))],
});
const span = tracerProvider.getTracer("node").startSpan("checkout", {
  attributes: {
    "mixpanel.event": "Node Checkout", "mixpanel.user_id": user,
    "mixpanel.properties.items": 3, "mixpanel.properties.tags": ["a", "b"],
    "mixpanel.people.set.plan": "pro",
  },
});
span.end();
const loggerProvider = new LoggerProvider({
  resource,
  processors: [new SimpleLogRecordProcessor({
    exporter: new OTLPLogExporter({ url: `${base}/v1/logs`, ...options }),
  })],
});
loggerProvider.getLogger("node").emit({
  body: "paid", attributes: { "mixpanel.event": "Node Paid", "mixpanel.user_id": user },
});
await tracerProvider.shutdown();
await loggerProvider.shutdown();
void trace;
