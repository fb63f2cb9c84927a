// A Node "service" for tests/test_gateway_fleet.py: the SDK with the stock OTLP/HTTP
// exporters (protobuf spans, JSON log records) behind batch processors, sending the
// tagged spans, span events and log records of a spec file to a Collector.
// Usage: node service.mjs <collector-base-url> <spec.json> <service.name>
// The spec's shape is described in tests/fleet_service.py (its Python twin); the
// logs of a span are emitted inside it, so they carry its trace and span ids.
// Exits 1 when an export failed.
import { readFileSync } from "node:fs";
import { context, trace } from "@opentelemetry/api";
import { OTLPLogExporter } from "@opentelemetry/exporter-logs-otlp-http";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-proto";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { BatchLogRecordProcessor, LoggerProvider } from "@opentelemetry/sdk-logs";
import { BasicTracerProvider, BatchSpanProcessor } from "@opentelemetry/sdk-trace-base";

const [base, specPath, serviceName] = process.argv.slice(2);
const spec = JSON.parse(readFileSync(specPath, "utf8"));
const failures = [];

// The exporter as it is, its failed exports remembered (the processors only log them).
function checked(exporter) {
  return {
    export(items, done) {
      exporter.export(items, (result) => {
        if (result.code !== 0) failures.push(String(result.error ?? "export failed"));
        done(result);
      });
    },
    shutdown: () => exporter.shutdown(),
    forceFlush: () => exporter.forceFlush(),
  };
}

const resource = resourceFromAttributes({ "service.name": serviceName });
const batch = { scheduledDelayMillis: 200 };
const tracerProvider = new BasicTracerProvider({
  resource,
  spanProcessors: [
    new BatchSpanProcessor(checked(new OTLPTraceExporter({ url: `${base}/v1/traces` })), batch),
  ],
});
const loggerProvider = new LoggerProvider({
  resource,
  processors: [
    new BatchLogRecordProcessor({
      exporter: checked(new OTLPLogExporter({ url: `${base}/v1/logs` })), ...batch,
    }),
  ],
});
const tracer = tracerProvider.getTracer("fleet-service");
const logger = loggerProvider.getLogger("fleet-service");

for (const spanSpec of spec.spans ?? []) {
  const span = tracer.startSpan(spanSpec.name, { attributes: spanSpec.attributes });
  for (const event of spanSpec.events ?? []) span.addEvent(event.name, event.attributes);
  const inSpan = trace.setSpan(context.active(), span);
  for (const record of spanSpec.logs ?? []) {
    logger.emit({ body: record.body, attributes: record.attributes, context: inSpan });
  }
  span.end();
}
for (const record of spec.logs ?? []) {
  logger.emit({ body: record.body, attributes: record.attributes });
}
await tracerProvider.shutdown();
await loggerProvider.shutdown();
for (const failure of failures) console.error(`export failed: ${failure}`);
process.exitCode = failures.length ? 1 : 0;
