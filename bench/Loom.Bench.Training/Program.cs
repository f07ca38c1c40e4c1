using System.Diagnostics;
using System.Globalization;
using Loom.Bench.Training;
using Loom.Core;
using Loom.Training;
using TorchSharp;

// Training throughput, Loom against PyTorch (TorchSharp, libtorch CPU), in one process: the same ~11M-parameter
// Llama-style decoder, batch, context and thread count; repetitions alternate Loom and PyTorch so that the load of a
// shared machine falls on both alike. Each timed step is forward + backward + gradient clipping + AdamW.
//   dotnet run -c Release --project bench/Loom.Bench.Training -- [--reps 5] [--steps 3] [--threads 2] [--bf16] [--dropout 0.1]
//       [--default-model-shape] [--profile]
// --bf16 adds Loom with bf16 products as a third contestant.
// --dropout trains both sides with that rate on the attention probabilities and on both residual branches (PyTorch:
// scaled_dot_product_attention's dropout_p and functional dropout), as a real training run with dropout would.
// --default-model-shape trains the shape and batch that scripts/default-model/train.sh trains the default model with
// (dim 256, 8 / 4 heads, SwiGLU 704, batch 16) instead of the issue's ~10M-parameter model.
// --profile times each kernel of a Loom step alone instead (with DOTNET_TieredCompilation=0, so every kernel is timed optimized).
CultureInfo.CurrentCulture = CultureInfo.InvariantCulture;
int reps = Option("--reps", 5), steps = Option("--steps", 3), threads = Option("--threads", 2);
float dropout = RateOption("--dropout");
bool defaultModelShape = args.Contains("--default-model-shape");
int batch = defaultModelShape ? 16 : 8;
var shape = defaultModelShape
    ? new ModelShape { VocabSize = 4096, Dim = 256, Layers = 6, Heads = 8, KvHeads = 4, Hidden = 704, Context = 256 }
    : new ModelShape { VocabSize = 4096, Dim = 384, Layers = 6, Heads = 6, KvHeads = 2, Hidden = 1024, Context = 256 };
int seqLen = shape.Context, tokensPerStep = batch * seqLen;

if (args.Contains("--profile"))
{
    KernelProfile.Run(shape, batch, threads);
    return;
}

var model = new Decoder(shape) { Threads = threads, AttentionDropout = dropout, ResidualDropout = dropout };
model.Initialize(1);
var optimizer = new AdamW(model.Layout, weightDecay: 0.1f);
torch.set_num_threads(threads);
using var reference = new TorchDecoder(model, weightDecay: 0.1f, clip: 1f, dropout);

long parameters = model.Parameters.Length;
// 6 FLOPs per parameter per token (forward 2, backward 4) plus causal attention: QKᵀ and P·V cost 2·dim·(t+1) each
// per layer forward, twice that backward, so on average 6·layers·dim·(T+1) per token.
double flopsPerToken = 6.0 * parameters + 6.0 * shape.Layers * shape.Dim * (seqLen + 1);
Console.WriteLine($"CPU: {CpuName()}, {Environment.ProcessorCount} logical CPUs, load average {LoadAverage()}");
Console.WriteLine($"model: dim {shape.Dim}, {shape.Layers} layers, {shape.Heads} heads / {shape.KvHeads} KV heads, SwiGLU {shape.Hidden}, " +
                  $"vocab {shape.VocabSize}, context {seqLen}; {parameters:N0} parameters; batch {batch} ({tokensPerStep} tokens/step)");
string ActivationMiB(TrainingPrecision precision)
{
    model.Precision = precision;
    return $"{precision.ToString().ToLowerInvariant()} {model.ActivationBytes(batch, seqLen) / (1024.0 * 1024):F1} MiB";
}
Console.WriteLine($"Loom activation memory per step (kept activations, logits, backward buffers): {ActivationMiB(TrainingPrecision.Bf16)}, " +
                  $"{ActivationMiB(TrainingPrecision.Fp32)}");
Console.WriteLine($"threads {threads}; {reps} repetitions × {steps} steps per side; {flopsPerToken / 1e6:F1} MFLOP per token; " +
                  $"FMA peak measured with {FmaPeak.Isa} vectors; dropout {dropout}");

var data = new DeterministicRandom(7);
int[] tokens = new int[tokensPerStep], targets = new int[tokensPerStep];
long[] torchTokens = new long[tokensPerStep], torchTargets = new long[tokensPerStep];
void NextBatch()
{
    for (int i = 0; i < tokensPerStep; i++)
    {
        tokens[i] = data.NextInt(shape.VocabSize);
        targets[i] = data.NextInt(shape.VocabSize);
        torchTokens[i] = tokens[i];
        torchTargets[i] = targets[i];
    }
}
ulong dropoutKey = 0;
double LoomStep()
{
    model.ZeroGradients();
    // a fresh mask every step, as the trainer draws one per micro-batch (0 means no dropout)
    double loss = model.Forward(tokens, targets, batch, seqLen, dropout > 0 ? ++dropoutKey : 0);
    model.Backward();
    GradientClipping.ClipByGlobalNorm(model.Gradients, 1f, model.Threads);
    optimizer.Update(model.Parameters, model.Gradients, 1e-3f, model.Threads);
    return loss;
}
double TorchStep() => reference.Step(torchTokens, torchTargets, batch, seqLen, 1e-3f);

// Warm-up: JIT, buffers, libtorch's allocator; also shows that both start from the same loss (without dropout: the
// two sides draw different masks).
NextBatch();
Console.WriteLine($"first-step loss: Loom {LoomStep():F4}, PyTorch {TorchStep():F4}");

// Contestants: Loom fp32, Loom bf16 with --bf16 (TorchSharp has no autocast, so PyTorch runs fp32 only), PyTorch.
var contestants = new List<(string Name, Func<double> Step)> { ("Loom fp32", () => LoomStepIn(TrainingPrecision.Fp32)) };
if (args.Contains("--bf16")) contestants.Add(("Loom bf16", () => LoomStepIn(TrainingPrecision.Bf16)));
contestants.Add(("PyTorch fp32", TorchStep));
var rates = contestants.ToDictionary(c => c.Name, _ => new List<double>());
var peaks = new List<double>();
double LoomStepIn(TrainingPrecision precision)
{
    model.Precision = precision;
    return LoomStep();
}
(double Rate, double Loss) Time(Func<double> step)
{
    step(); // one untimed step: the other side's run has just had the caches
    // Loom's bf16 and fp32 passes keep different workspaces (switching reallocates): collect the old one here, untimed.
    GC.Collect();
    double loss = 0;
    var clock = Stopwatch.StartNew();
    for (int s = 0; s < steps; s++)
    {
        NextBatch();
        loss = step();
    }
    return (tokensPerStep * steps / clock.Elapsed.TotalSeconds, loss);
}
for (int r = 0; r < reps; r++)
{
    // Rotate the order, so no side always follows the same other side's cache and allocator state.
    var line = new List<string>();
    for (int i = 0; i < contestants.Count; i++)
    {
        var (name, step) = contestants[(i + r) % contestants.Count];
        var (rate, loss) = Time(step);
        rates[name].Add(rate);
        line.Add($"{name} {rate:F0} tok/s (loss {loss:F4})");
    }
    peaks.Add(FmaPeak.Measure(threads));
    Console.WriteLine($"rep {r + 1}: {string.Join(", ", line)}; FMA peak {peaks[^1] / 1e9:F0} GFLOP/s; load {LoadAverage()}");
}

// MFU against the highest peak measured (what the cores can do when this process has them) and against the median
// one (what the shared machine gave during the run).
double peak = peaks.Max(), typicalPeak = Statistics.Median(peaks);
var torchRates = rates["PyTorch fp32"];
Console.WriteLine();
Console.WriteLine("| engine | median tok/s | min | max | GFLOP/s (median) | MFU vs best peak | MFU vs median peak | ÷ PyTorch (median of reps) |");
Console.WriteLine("|---|---:|---:|---:|---:|---:|---:|---:|");
foreach (var (name, _) in contestants)
{
    var list = rates[name];
    double median = Statistics.Median(list), flops = median * flopsPerToken;
    var ratios = list.Zip(torchRates, (l, t) => l / t).ToList();
    Console.WriteLine($"| {name} | {median:F0} | {list.Min():F0} | {list.Max():F0} | {flops / 1e9:F1} | {flops / peak:P0} | {flops / typicalPeak:P0} | " +
                      $"{Statistics.Median(ratios):F2} ({string.Join(", ", ratios.Select(x => x.ToString("F2")))}) |");
}
Console.WriteLine($"FMA peak max {peak / 1e9:F0} GFLOP/s, median {typicalPeak / 1e9:F0}, min {peaks.Min() / 1e9:F0}; load average {LoadAverage()}");

float RateOption(string name)
{
    int i = Array.IndexOf(args, name);
    if (i < 0) return 0;
    if (i + 1 >= args.Length || !float.TryParse(args[i + 1], NumberStyles.Float, CultureInfo.InvariantCulture, out float value) || value is < 0 or >= 1)
        throw new ArgumentException($"{name} needs a rate in [0, 1)");
    return value;
}

int Option(string name, int fallback)
{
    int i = Array.IndexOf(args, name);
    if (i < 0) return fallback;
    if (i + 1 >= args.Length || !int.TryParse(args[i + 1], out int value) || value < 1)
        throw new ArgumentException($"{name} needs a positive integer");
    return value;
}


static string CpuName()
{
    try
    {
        var line = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name"));
        return line?.Split(':', 2)[1].Trim() ?? "unknown CPU";
    }
    catch (IOException)
    {
        return "unknown CPU";
    }
}

static string LoadAverage()
{
    try
    {
        return string.Join(' ', File.ReadAllText("/proc/loadavg").Split(' ').Take(3));
    }
    catch (IOException)
    {
        return "n/a";
    }
}
