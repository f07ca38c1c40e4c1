using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using BenchmarkDotNet.Attributes;
using Loom.Inference;

namespace Loom.Bench.Kernels;

/// <summary>
/// The operators a forward pass runs between its matrix products, on one thread, at Llama-3.2-1B's shapes (dim 2048,
/// 32 query heads and 8 key/value heads of 64): RMSNorm and RoPE over a batch of 32 tokens, softmax over attention
/// rows, and decode attention of one token over a 2048-position cache (F32 and F16, the two KV cache types). Norm, RoPE and softmax data stay in cache (as
/// in a forward pass); the attention's keys and values (8 MiB) come from L3. More warm-up than the suite's default:
/// the library calls inside the operators (TensorPrimitives) start in tier-0 code and need a few hundred
/// milliseconds of calls to be recompiled; measured before that, RMSNorm ran 4× and attention 6× slower.
/// </summary>
[WarmupCount(30)]
public unsafe class OperatorBenchmarks
{
    public const int Dim = 2048, Tokens = 32, Heads = 32, KvHeads = 8, HeadLength = 64, Context = 2048;

    /// <summary>Kernel calls per invocation, so each invocation lasts long enough to time.</summary>
    public const int Repeats = 200;

    /// <summary>The operators run on the calling thread (the summary table's thread column).</summary>
    [Params(1)]
    public int Threads { get; set; }

    private float* _x, _y, _cos, _sin, _rows, _keys, _values, _query, _scores, _output;
    private Half* _keyHalves, _valueHalves;
    private float* _converted;

    /// <summary>Bytes an invocation of <paramref name="method"/> reads and writes (for GB/s).</summary>
    public static double Bytes(string method) => method switch
    {
        nameof(RmsNorm) => Repeats * 2.0 * Tokens * Dim * sizeof(float),
        nameof(Rope) => Repeats * 2.0 * Tokens * Heads * HeadLength * sizeof(float),
        nameof(Softmax) => Repeats * 2.0 * Heads * Context * sizeof(float),
        nameof(DecodeAttention) => Repeats * 2.0 * Heads * Context * HeadLength * sizeof(float),
        nameof(DecodeAttentionF16) => Repeats * 2.0 * Heads * Context * HeadLength * sizeof(ushort),
        _ => 0,
    };

    /// <summary>Floating-point operations of an invocation of the attention (two multiply-adds per position and dimension).</summary>
    public static double Flops(string method) =>
        method is nameof(DecodeAttention) or nameof(DecodeAttentionF16) ? Repeats * 4.0 * Heads * Context * HeadLength : 0;

    [GlobalSetup]
    public void Setup()
    {
        var random = new Random(11);
        float* Fill(long count, float scale)
        {
            var p = (float*)NativeMemory.AlignedAlloc((nuint)(count * sizeof(float)), 64);
            for (long i = 0; i < count; i++) p[i] = (random.NextSingle() * 2 - 1) * scale;
            return p;
        }
        _x = Fill((long)Tokens * Dim, 1f);
        _y = Fill((long)Tokens * Dim, 1f);
        // unit rotations, so repeated application keeps the values bounded
        _cos = Fill((long)Tokens * HeadLength / 2, 0f);
        _sin = Fill((long)Tokens * HeadLength / 2, 0f);
        for (int i = 0; i < Tokens * HeadLength / 2; i++)
        {
            float angle = random.NextSingle() * 2 * MathF.PI;
            _cos[i] = MathF.Cos(angle);
            _sin[i] = MathF.Sin(angle);
        }
        _rows = Fill((long)Heads * Context, 4f);
        _keys = Fill((long)KvHeads * Context * HeadLength, 1f);
        _values = Fill((long)KvHeads * Context * HeadLength, 1f);
        _query = Fill((long)Heads * HeadLength, 1f);
        _scores = Fill((long)(Heads / KvHeads) * Context, 0f);
        _output = Fill((long)Heads * HeadLength, 0f);
        long cached = (long)KvHeads * Context * HeadLength;
        _keyHalves = (Half*)NativeMemory.AlignedAlloc((nuint)(cached * sizeof(ushort)), 64);
        _valueHalves = (Half*)NativeMemory.AlignedAlloc((nuint)(cached * sizeof(ushort)), 64);
        _converted = Fill(OperatorKernels.HalfBlockFloats, 0f);
        TensorPrimitives.ConvertToHalf(new ReadOnlySpan<float>(_keys, (int)cached), new Span<Half>(_keyHalves, (int)cached));
        TensorPrimitives.ConvertToHalf(new ReadOnlySpan<float>(_values, (int)cached), new Span<Half>(_valueHalves, (int)cached));
    }

    [Benchmark]
    public void RmsNorm()
    {
        for (int r = 0; r < Repeats; r++)
            for (int t = 0; t < Tokens; t++)
                OperatorKernels.RmsNorm(new ReadOnlySpan<float>(_x + (long)t * Dim, Dim), new Span<float>(_y + (long)t * Dim, Dim), 1e-5f);
    }

    [Benchmark]
    public void Rope()
    {
        for (int r = 0; r < Repeats; r++)
            OperatorKernels.Rotate(_y, Tokens, Heads, HeadLength, HeadLength / 2, neox: false, _cos, _sin);
    }

    [Benchmark]
    public void Softmax()
    {
        for (int r = 0; r < Repeats; r++)
            for (int h = 0; h < Heads; h++)
                OperatorKernels.Softmax(new Span<float>(_rows + (long)h * Context, Context));
    }

    /// <summary>
    /// One query token, every head, as a forward pass attends (<see cref="Repeats"/> times: one pass is too short to
    /// time): per key/value head, its query heads' scores against the cached keys, their softmax, and the weighted sums
    /// of the values, through the kernels the forward pass calls.
    /// </summary>
    [Benchmark]
    public void DecodeAttention() => Attend(_keys, _values, halves: false);

    /// <summary>
    /// The same from an F16 cache (what <see cref="KvCacheType.F16"/> sessions hold): with four query heads per key/value
    /// head, one token reads the halves in place (larger groups convert a block of rows at a time).
    /// </summary>
    [Benchmark]
    public void DecodeAttentionF16() => Attend(_keyHalves, _valueHalves, halves: true);

    private void Attend(void* keys, void* values, bool halves)
    {
        float scale = 1f / MathF.Sqrt(HeadLength);
        int group = Heads / KvHeads, elementBytes = halves ? sizeof(ushort) : sizeof(float);
        for (int r = 0; r < Repeats; r++)
            for (int kv = 0; kv < KvHeads; kv++)
            {
                long at = (long)kv * Context * HeadLength * elementBytes;
                OperatorKernels.ScoresTokens(_query + kv * group * HeadLength, 0, 1, group, (byte*)keys + at, halves, finite: true, HeadLength, Context, scale, _scores, Context, _converted);
                for (int g = 0; g < group; g++) OperatorKernels.Softmax(new Span<float>(_scores + (long)g * Context, Context));
                OperatorKernels.WeightedSumTokens((byte*)values + at, halves, finite: true, HeadLength, 1, Context, _scores, Context, group, _output + kv * group * HeadLength, 0, _converted);
            }
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (var p in new[] { _x, _y, _cos, _sin, _rows, _keys, _values, _query, _scores, _output, _converted }) NativeMemory.AlignedFree(p);
        NativeMemory.AlignedFree(_keyHalves);
        NativeMemory.AlignedFree(_valueHalves);
    }
}
