using System.Runtime.InteropServices;
using BenchmarkDotNet.Attributes;
using Loom.Core;
using Loom.Core.Kernels;
using Loom.Core.Quantization;
using Loom.Core.Threading;

namespace Loom.Bench.Kernels;

/// <summary>
/// Loom's quantized matrix × vector (1 token) and matrix × matrix (32 tokens) products. The weights are several copies
/// of one 2048 × 2048 matrix, at least <see cref="WorkingSetBytes"/> in all, multiplied in turn like a model's layers,
/// so they stream from DRAM rather than the 32 MiB L3 — the situation of a real decode step.
/// </summary>
public unsafe class MatMulBenchmarks
{
    public const int Rows = 2048, Cols = 2048;
    public const long WorkingSetBytes = 160L << 20;

    [Params(GgmlType.F16, GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q4_K, GgmlType.Q6_K)]
    public GgmlType Type { get; set; }

    [Params(1, 32)]
    public int Tokens { get; set; }

    [Params(1, 2)]
    public int Threads { get; set; }

    /// <summary>
    /// True: the matrices as a model load prepares them (<see cref="WeightMatrix.CreateOptimized"/>: Q8_0, Q4_0, Q5_0,
    /// Q4_K and Q6_K interleaved eight rows at a time, F16 checked finite); false: the GGML layout as stored.
    /// </summary>
    [Params(true, false)]
    public bool Optimized { get; set; }

    private WeightMatrix[] _matrices = [];
    private byte* _weights;
    private float* _x, _y;
    private LoomThreadPool? _pool;

    /// <summary>Bytes of weights one invocation reads (all copies once).</summary>
    public static long WeightBytes(GgmlType type) => MatrixBytes(type) * Copies(type);

    /// <summary>Multiply-adds of one invocation, counted as two FLOPs each.</summary>
    public static double Flops(GgmlType type, int tokens) => 2.0 * Rows * Cols * tokens * Copies(type);

    private static long MatrixBytes(GgmlType type) => GgmlTypeInfo.RowBytes(type, Cols) * Rows;
    private static int Copies(GgmlType type) => (int)((WorkingSetBytes + MatrixBytes(type) - 1) / MatrixBytes(type));

    [GlobalSetup]
    public void Setup()
    {
        var random = new Random(7);
        var values = new float[Cols];
        long matrixBytes = MatrixBytes(Type), rowBytes = GgmlTypeInfo.RowBytes(Type, Cols);
        int copies = Copies(Type);
        _weights = (byte*)NativeMemory.AlignedAlloc((nuint)(matrixBytes * copies), 64);
        for (int r = 0; r < Rows; r++)
        {
            for (int c = 0; c < Cols; c++) values[c] = random.NextSingle() * 2 - 1;
            Quantizer.Quantize(Type, values, new Span<byte>(_weights + r * rowBytes, (int)rowBytes));
        }
        for (int i = 1; i < copies; i++)
            Buffer.MemoryCopy(_weights, _weights + i * matrixBytes, matrixBytes, matrixBytes);
        _matrices = Enumerable.Range(0, copies).Select(i => Optimized
            ? WeightMatrix.CreateOptimized(Type, _weights + i * matrixBytes, Rows, Cols)
            : new WeightMatrix(Type, _weights + i * matrixBytes, Rows, Cols)).ToArray();
        _x = (float*)NativeMemory.AlignedAlloc((nuint)(sizeof(float) * Cols * Tokens), 64);
        _y = (float*)NativeMemory.AlignedAlloc((nuint)(sizeof(float) * Rows * Tokens), 64);
        for (int i = 0; i < Cols * Tokens; i++) _x[i] = random.NextSingle() * 2 - 1;
        _pool = new LoomThreadPool(Threads);
    }

    [Benchmark]
    public void Multiply()
    {
        foreach (var matrix in _matrices) matrix.Multiply(_x, _y, Tokens, _pool!);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _pool?.Dispose();
        NativeMemory.AlignedFree(_weights);
        NativeMemory.AlignedFree(_x);
        NativeMemory.AlignedFree(_y);
    }
}
