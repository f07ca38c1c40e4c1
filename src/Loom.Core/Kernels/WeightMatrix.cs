using Loom.Core.Quantization;
using Loom.Core.Threading;

namespace Loom.Core.Kernels;

/// <summary>
/// A weight matrix of <see cref="Rows"/> rows × <see cref="Cols"/> columns stored row-major in a GGML type
/// (each row is Cols elements, i.e. ne0 = Cols in GGUF terms). Data is borrowed (usually a memory map), never copied.
/// </summary>
/// <remarks>
/// Quantized types multiply as llama.cpp does: the inputs are quantized once per call (Q8_0/Q8_1 blocks for the
/// 32-element types, Q8_K for the K-quants and IQ4_XS) and rows are dotted with integer SIMD; float types use FMA dots.
/// Rows are split over a <see cref="LoomThreadPool"/>; several tokens are processed per pass over a tile of rows.
/// </remarks>
public sealed unsafe class WeightMatrix
{
    /// <summary>Below this much weight data per call the work runs on the calling thread (waking workers costs more).</summary>
    private const long MinParallelBytes = 64 * 1024;

    public GgmlType Type { get; }
    public byte* Data { get; }
    public int Rows { get; }
    public int Cols { get; }
    public long RowBytes { get; }

    public WeightMatrix(GgmlType type, byte* data, int rows, int cols)
    {
        if (!DotKernels.IsSupported(type))
            throw new NotSupportedException($"weight matrices of type {GgmlTypeInfo.Name(type)} are not supported");
        if (rows < 0) throw new ArgumentOutOfRangeException(nameof(rows), rows, "row count must not be negative");
        if (cols <= 0) throw new ArgumentOutOfRangeException(nameof(cols), cols, "column count must be positive");
        if (data == null && rows > 0) throw new ArgumentNullException(nameof(data));
        Type = type;
        Data = data;
        Rows = rows;
        Cols = cols;
        RowBytes = GgmlTypeInfo.RowBytes(type, cols);
    }

    /// <summary>Whether Loom's matrix kernels handle weights of <paramref name="type"/>.</summary>
    public static bool IsSupported(GgmlType type) => DotKernels.IsSupported(type);

    /// <summary>
    /// y[t*Rows + r] = Σc W[r,c]·x[t*Cols + c] for each of the <paramref name="tokens"/> input vectors, on the shared pool.
    /// x and y must not overlap. Safe to call from several threads at once (each caller has its own scratch).
    /// </summary>
    public void Multiply(float* x, float* y, int tokens) => Multiply(x, y, tokens, LoomThreadPool.Shared, KernelIsaSupport.Best);

    /// <summary>As <see cref="Multiply(float*, float*, int)"/>, on the given pool.</summary>
    public void Multiply(float* x, float* y, int tokens, LoomThreadPool pool) => Multiply(x, y, tokens, pool, KernelIsaSupport.Best);

    /// <summary>As <see cref="Multiply(float*, float*, int)"/> with an explicit instruction-set path (tests compare them).</summary>
    internal void Multiply(float* x, float* y, int tokens, LoomThreadPool pool, KernelIsa isa)
    {
        ArgumentNullException.ThrowIfNull(pool);
        if (tokens < 0) throw new ArgumentOutOfRangeException(nameof(tokens), tokens, "token count must not be negative");
        if (tokens == 0 || Rows == 0) return;
        if (x == null) throw new ArgumentNullException(nameof(x));
        if (y == null) throw new ArgumentNullException(nameof(y));
        if (!KernelIsaSupport.IsSupported(isa))
            throw new PlatformNotSupportedException($"this CPU cannot run the {isa} kernels");

        var job = MatMulJob.ForCurrentThread;
        int threads = pool.ThreadCount;
        long bytes = Rows * RowBytes;
        int rowsPerChunk;
        if (threads == 1 || bytes * tokens < MinParallelBytes)
            rowsPerChunk = Rows;
        else
        {
            // About four chunks per thread balances uneven progress; whole row tiles keep the token loop efficient.
            int target = (Rows + threads * 4 - 1) / (threads * 4);
            rowsPerChunk = Math.Max(MatMulJob.RowTile, (target + MatMulJob.RowTile - 1) / MatMulJob.RowTile * MatMulJob.RowTile);
        }
        job.Prepare(this, isa, x, y, tokens, rowsPerChunk);
        pool.Run(job, job.ChunkCount);
    }

    /// <summary>Writes row <paramref name="r"/> as floats (used for embedding look-ups).</summary>
    public void DequantizeRow(int r, Span<float> destination)
    {
        if ((uint)r >= (uint)Rows) throw new ArgumentOutOfRangeException(nameof(r), r, $"row must be in [0, {Rows})");
        if (destination.Length < Cols) throw new ArgumentException($"destination holds {destination.Length} floats, a row has {Cols}", nameof(destination));
        fixed (float* dst = destination)
            Dequantizer.DequantizeUnchecked(Type, Data + r * RowBytes, dst, Cols);
    }
}
