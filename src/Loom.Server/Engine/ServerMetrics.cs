using System.Globalization;
using System.Text;

namespace Loom.Server.Engine;

/// <summary>Counters, gauges and latency histograms of the server, written in the Prometheus text format.</summary>
public sealed class ServerMetrics
{
    private static readonly double[] TimeToFirstTokenBuckets = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
    private static readonly double[] InterTokenBuckets = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];

    private readonly object _lock = new();
    private readonly Dictionary<(string Endpoint, int Status), long> _requests = [];
    private long _promptTokens, _generatedTokens, _rejected, _cancelled;
    private long _queueDepth, _running, _kvCached, _kvCapacity;
    private readonly Histogram _timeToFirstToken = new(TimeToFirstTokenBuckets);
    private readonly Histogram _interToken = new(InterTokenBuckets);

    public void CountRequest(string endpoint, int status)
    {
        lock (_lock) _requests[(endpoint, status)] = _requests.GetValueOrDefault((endpoint, status)) + 1;
    }

    public void CountPromptTokens(int n) => Interlocked.Add(ref _promptTokens, n);
    public void CountGeneratedToken() => Interlocked.Increment(ref _generatedTokens);
    public void CountRejected() => Interlocked.Increment(ref _rejected);
    public void CountCancelled() => Interlocked.Increment(ref _cancelled);
    public void SetQueue(int depth) => Interlocked.Exchange(ref _queueDepth, depth);

    public void SetOccupancy(int running, long cachedTokens, long capacityTokens)
    {
        Interlocked.Exchange(ref _running, running);
        Interlocked.Exchange(ref _kvCached, cachedTokens);
        Interlocked.Exchange(ref _kvCapacity, capacityTokens);
    }

    public void ObserveTimeToFirstToken(TimeSpan t)
    {
        lock (_lock) _timeToFirstToken.Observe(t.TotalSeconds);
    }

    public void ObserveInterToken(TimeSpan t)
    {
        lock (_lock) _interToken.Observe(t.TotalSeconds);
    }

    public long GeneratedTokens => Interlocked.Read(ref _generatedTokens);
    public long RunningSequences => Interlocked.Read(ref _running);
    public long QueueDepth => Interlocked.Read(ref _queueDepth);
    public long CachedTokens => Interlocked.Read(ref _kvCached);

    public string Render()
    {
        var w = new StringBuilder();
        lock (_lock)
        {
            Header(w, "loom_requests_total", "counter", "HTTP requests by endpoint and status code.");
            foreach (var ((endpoint, status), n) in _requests.OrderBy(r => r.Key.Endpoint, StringComparer.Ordinal).ThenBy(r => r.Key.Status))
                w.Append($"loom_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}\n");
            Metric(w, "loom_requests_rejected_total", "counter", "Requests refused with 429 because the queue was full.", _rejected);
            Metric(w, "loom_requests_cancelled_total", "counter", "Sequences cancelled before they finished (client gone).", _cancelled);
            Metric(w, "loom_prompt_tokens_total", "counter", "Prompt tokens admitted for evaluation.", _promptTokens);
            Metric(w, "loom_generated_tokens_total", "counter", "Tokens generated.", _generatedTokens);
            Metric(w, "loom_queue_depth", "gauge", "Sequences waiting for a slot.", _queueDepth);
            Metric(w, "loom_running_sequences", "gauge", "Sequences holding a KV-cache slot.", _running);
            Metric(w, "loom_kv_cache_tokens", "gauge", "Positions held in the KV cache across all slots.", _kvCached);
            Metric(w, "loom_kv_cache_capacity_tokens", "gauge", "Positions the KV cache can hold across all slots.", _kvCapacity);
            Header(w, "loom_kv_cache_usage_ratio", "gauge", "Fraction of the KV cache in use.");
            w.Append("loom_kv_cache_usage_ratio ").Append(Format(_kvCapacity == 0 ? 0 : (double)_kvCached / _kvCapacity)).Append('\n');
            _timeToFirstToken.Write(w, "loom_time_to_first_token_seconds", "Time from queueing a sequence to its first generated token.");
            _interToken.Write(w, "loom_inter_token_latency_seconds", "Time between consecutive generated tokens of a sequence.");
        }
        // Process-wide memory, so that leaks (per request, per cancelled stream) show up from outside the process.
        Metric(w, "process_resident_memory_bytes", "gauge", "Resident memory of the server process.", Environment.WorkingSet);
        Metric(w, "dotnet_gc_heap_bytes", "gauge", "Bytes allocated on the managed heap, garbage not yet collected included.", GC.GetTotalMemory(false));
        return w.ToString();
    }

    private static void Header(StringBuilder w, string name, string type, string help) =>
        w.Append("# HELP ").Append(name).Append(' ').Append(help).Append("\n# TYPE ").Append(name).Append(' ').Append(type).Append('\n');

    private static void Metric(StringBuilder w, string name, string type, string help, long value)
    {
        Header(w, name, type, help);
        w.Append(name).Append(' ').Append(value.ToString(CultureInfo.InvariantCulture)).Append('\n');
    }

    private static string Format(double v) => v.ToString("R", CultureInfo.InvariantCulture);

    private sealed class Histogram(double[] bounds)
    {
        private readonly long[] _counts = new long[bounds.Length];
        private long _total;
        private double _sum;

        public void Observe(double value)
        {
            for (int i = 0; i < bounds.Length; i++) if (value <= bounds[i]) _counts[i]++;
            _total++;
            _sum += value;
        }

        public void Write(StringBuilder w, string name, string help)
        {
            Header(w, name, "histogram", help);
            for (int i = 0; i < bounds.Length; i++)
                w.Append(name).Append("_bucket{le=\"").Append(Format(bounds[i])).Append("\"} ").Append(_counts[i]).Append('\n');
            w.Append(name).Append("_bucket{le=\"+Inf\"} ").Append(_total).Append('\n');
            w.Append(name).Append("_sum ").Append(Format(_sum)).Append('\n');
            w.Append(name).Append("_count ").Append(_total).Append('\n');
        }
    }
}
