using Loom.Core.IO;
using Loom.Core.Quantization;
using Loom.Core.Threading;

namespace Loom.Core.Kernels;

/// <summary>
/// A weight matrix of <see cref="Rows"/> rows × <see cref="Cols"/> columns stored row-major in a GGML type
/// (each row is Cols elements, i.e. ne0 = Cols in GGUF terms). Data is borrowed: a memory map, or a
/// <see cref="WeightArena"/> that <see cref="CreateOptimized"/> copied it into.
/// </summary>
/// <remarks>
/// Quantized types multiply as llama.cpp does: the inputs are quantized once per call (Q8_0/Q8_1 blocks for the
/// 32-element types, Q8_K for the K-quants and IQ4_XS) and rows are dotted with integer SIMD; float types use FMA dots.
/// Rows are split over a <see cref="LoomThreadPool"/>; several tokens are processed per pass over a tile of rows.
/// </remarks>
public sealed unsafe class WeightMatrix
{
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

    /// <summary>
    /// True when the rows were reorganised in place, eight at a time, into the row-lane order of the kernels
    /// (see <see cref="CreateOptimized"/>); <see cref="Data"/> then no longer holds GGML rows.
    /// </summary>
    public bool Interleaved { get; private init; }

    /// <summary>True for an F16 matrix checked to hold no Inf or NaN (<see cref="CreateOptimized"/>): decode then takes a lighter kernel.</summary>
    public bool FiniteHalves { get; private init; }

    /// <summary>
    /// A matrix over <paramref name="data"/>, prepared for the fastest kernels. Q8_0, Q4_0, Q5_0, Q4_K and Q6_K are
    /// reorganised in place into the interleaved layout that makes one-token products faster and spares tiles of many
    /// tokens their transposition (llama.cpp repacks such weights at load for the same reason): the memory must be
    /// writable and must not be read as GGML rows afterwards (a copy-on-write map of the model file serves). F16 weights
    /// are checked once for Inf/NaN. Shapes that gain nothing (rows not a multiple of eight, a CPU without AVX2, Inf/NaN
    /// scales) are left as they are. Given an <paramref name="arena"/>, the matrix is first copied into it and the source's
    /// pages released (see <see cref="WeightArena.CopyAndRelease"/>), and all of this happens to the copy; the source
    /// then needs no write access. <see cref="DequantizeRow"/> gives bit for bit what a plain matrix gives, and so do
    /// the products, except Q4_K/Q6_K's: those have their own arithmetic (see <see cref="InterleavedKQuantKernels"/>),
    /// the same on every path and within rounding of the plain matrix's.
    /// </summary>
    public static WeightMatrix CreateOptimized(GgmlType type, byte* data, int rows, int cols, WeightArena? arena = null)
    {
        var matrix = new WeightMatrix(type, data, rows, cols);
        if (arena is not null && rows > 0)
            matrix = new WeightMatrix(type, arena.CopyAndRelease(data, rows * matrix.RowBytes), rows, cols);
        data = matrix.Data;
        if (KernelIsaSupport.Best == KernelIsa.Portable || rows == 0) return matrix;
        if (type == GgmlType.F16)
            return FloatKernels.HalvesFinite((ushort*)data, (long)rows * cols) ? new WeightMatrix(type, data, rows, cols) { FiniteHalves = true } : matrix;
        if (!InterleavedKernels.Supports(type) || rows % InterleavedKernels.GroupRows != 0
            || !InterleavedKernels.ScalesFinite(type, data, rows, matrix.Blocks))
            return matrix;
        var buffer = new byte[InterleavedKernels.GroupRows * matrix.RowBytes];
        fixed (byte* b = buffer) InterleavedKernels.Interleave(type, data, rows, matrix.Blocks, b);
        return new WeightMatrix(type, data, rows, cols) { Interleaved = true };
    }

    private int Blocks => Cols / GgmlTypeInfo.BlockSize(Type);

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
        job.Prepare([this], [(nint)y], isa, x, tokens, pool);
        pool.Run(job, job.ChunkCount);
    }

    /// <summary>
    /// y_i = W_i·x for two or three matrices that read the same input (a layer's query, key and value projections, or
    /// its gate and up projections): the input is quantized once and one pool run covers every matrix's rows. Each
    /// output is bit for bit what <see cref="Multiply(float*, float*, int, LoomThreadPool)"/> gives; matrices whose
    /// types quantize the input differently are multiplied one after the other.
    /// </summary>
    public static void MultiplyShared(float* x, int tokens, LoomThreadPool pool,
        WeightMatrix first, float* firstY, WeightMatrix second, float* secondY, WeightMatrix? third = null, float* thirdY = null) =>
        MultiplyShared(x, tokens, pool, KernelIsaSupport.Best, first, firstY, second, secondY, third, thirdY);

    /// <summary>As <see cref="MultiplyShared(float*, int, LoomThreadPool, WeightMatrix, float*, WeightMatrix, float*, WeightMatrix?, float*)"/> on an explicit path.</summary>
    internal static void MultiplyShared(float* x, int tokens, LoomThreadPool pool, KernelIsa isa,
        WeightMatrix first, float* firstY, WeightMatrix second, float* secondY, WeightMatrix? third, float* thirdY)
    {
        ArgumentNullException.ThrowIfNull(first);
        ArgumentNullException.ThrowIfNull(second);
        if (first.Cols != second.Cols || third is not null && third.Cols != first.Cols)
            throw new ArgumentException("matrices that share an input must have the same number of columns");
        if (third is null != (thirdY == null))
            throw new ArgumentException("a third matrix needs a third output, and only then");
        bool together = MatMulJob.ShareInput(first, second) && (third is null || MatMulJob.ShareInput(first, third));
        if (!together || tokens <= 0 || first.Rows == 0 || second.Rows == 0 || third is { Rows: 0 })
        {
            first.Multiply(x, firstY, tokens, pool, isa);
            second.Multiply(x, secondY, tokens, pool, isa);
            third?.Multiply(x, thirdY, tokens, pool, isa);
            return;
        }
        ArgumentNullException.ThrowIfNull(pool);
        if (x == null || firstY == null || secondY == null) throw new ArgumentNullException(nameof(x), "inputs and outputs must not be null");
        if (!KernelIsaSupport.IsSupported(isa))
            throw new PlatformNotSupportedException($"this CPU cannot run the {isa} kernels");
        var job = MatMulJob.ForCurrentThread;
        if (third is null) job.Prepare([first, second], [(nint)firstY, (nint)secondY], isa, x, tokens, pool);
        else job.Prepare([first, second, third], [(nint)firstY, (nint)secondY, (nint)thirdY], isa, x, tokens, pool);
        pool.Run(job, job.ChunkCount);
    }

    /// <summary>Writes row <paramref name="r"/> as floats (used for embedding look-ups).</summary>
    public void DequantizeRow(int r, Span<float> destination)
    {
        if ((uint)r >= (uint)Rows) throw new ArgumentOutOfRangeException(nameof(r), r, $"row must be in [0, {Rows})");
        if (destination.Length < Cols) throw new ArgumentException($"destination holds {destination.Length} floats, a row has {Cols}", nameof(destination));
        if (Interleaved)
        {
            // rebuilt in GGML layout in a per-thread buffer (look-ups run per token: no allocation once warm)
            if (t_row is null || t_row.Length < RowBytes) t_row = new byte[RowBytes];
            fixed (byte* rebuilt = t_row)
            fixed (float* dst = destination)
            {
                int group = r / InterleavedKernels.GroupRows;
                InterleavedKernels.DeinterleaveRow(Type, Data + group * InterleavedKernels.GroupRows * RowBytes, Blocks, r % InterleavedKernels.GroupRows, rebuilt);
                Dequantizer.DequantizeUnchecked(Type, rebuilt, dst, Cols);
            }
            return;
        }
        fixed (float* dst = destination)
            Dequantizer.DequantizeUnchecked(Type, Data + r * RowBytes, dst, Cols);
    }

    [ThreadStatic] private static byte[]? t_row;
}
