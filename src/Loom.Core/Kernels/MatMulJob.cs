using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Loom.Core.Threading;

namespace Loom.Core.Kernels;

/// <summary>
/// Per-calling-thread state of <see cref="WeightMatrix.Multiply(float*, float*, int)"/> and
/// <see cref="WeightMatrix.MultiplyShared"/>: the quantized activations (shared read-only with the pool's workers during
/// the call), the matrices of the call (one, or several that read the same input) and the job objects, all reused.
/// </summary>
internal sealed unsafe class MatMulJob : IParallelWork
{
    [ThreadStatic] private static MatMulJob? t_current;

    public static MatMulJob ForCurrentThread => t_current ??= new MatMulJob();

    /// <summary>Rows a thread finishes for all tokens before moving on, so those weights are read from memory once.</summary>
    public const int RowTile = 16;

    /// <summary>The most matrices one call multiplies against the same input (query, key and value).</summary>
    public const int MaxParts = 3;

    /// <summary>From this many tokens on, types with a tile kernel transpose eight rows once and run every token over them.</summary>
    public const int TileMinTokens = 8;

    /// <summary>Below this much weight data per call the work runs on the calling thread (waking workers costs more).</summary>
    private const long MinParallelBytes = 64 * 1024;

    /// <summary>From this many input values on, the pool quantizes the tokens (a serial pass would leave the workers idle).</summary>
    private const long ParallelQuantizeValues = 16 * 1024;

    /// <summary>One matrix of a call: its kernels, its rows and where its outputs go.</summary>
    private struct Part
    {
        public delegate*<byte*, int, in ActivationRow, float> Dot;
        public delegate*<byte*, int, ActivationRow*, float*, void> DotFour;
        /// <summary>Four tokens against a tile of rows at once (finite F16 rows on the 512-bit path), or null.</summary>
        public delegate*<byte*, long, int, int, ActivationRow*, float*, void> DotFourRows;
        /// <summary>Many tokens against a tile of finite F16 rows on the 256-bit path, the rows widened once (or null).</summary>
        public delegate*<byte*, long, int, int, float*, int, float*, int, byte*, void> DotGroupsRows;
        /// <summary>Wide finite F16 rows: one token against a tile's rows at a time (null: <see cref="Dot"/> row by row).</summary>
        public delegate*<byte*, long, int, int, in ActivationRow, float*, void> DotRows;
        public delegate*<byte*, long, int, sbyte*, float*, short*, int, float*, int, byte*, void> Tile;
        /// <summary>Interleaved weights: the eight-row kernel for a last group that <see cref="Tile"/>'s sixteen rows leave over.</summary>
        public delegate*<byte*, long, int, sbyte*, float*, short*, int, float*, int, byte*, void> GroupTile;
        public bool Interleaved;
        /// <summary>The part's kernels take the inputs scaled by <see cref="FloatKernels.F16InputScale"/> (F16 on finite weights).</summary>
        public bool ScaledInput;
        public GgmlType Type;
        public byte* Weights;
        public long RowBytes;
        public int Rows, Units, RowsPerChunk, FirstChunk, TileRows;
        /// <summary>Leading chunks of <see cref="ShareRows"/> rows each (one per thread in decode), before the chunks of <see cref="RowsPerChunk"/>.</summary>
        public int Shares, ShareRows;
        public float* Y;
    }

    private readonly Part[] _parts = new Part[MaxParts];
    private readonly QuantizeWork _quantize;
    private int _partCount, _chunkCount, _quantizeChunks;

    private byte[] _buffer = [];
    private byte* _base;
    private int _cols, _tokens;
    private bool _halfSums;
    private ActivationKind _kind;
    private float* _x;
    private float* _scaledX;
    private sbyte* _qs;
    private float* _d;
    private float* _s;
    private short* _bsums;
    private short* _blockSums;

    private MatMulJob() => _quantize = new QuantizeWork(this);

    /// <summary>Whether <paramref name="a"/> and <paramref name="b"/> take the same quantized input, so one call can serve both.</summary>
    public static bool ShareInput(WeightMatrix a, WeightMatrix b) =>
        a.Cols == b.Cols && DotKernels.ActivationFor(a.Type) == DotKernels.ActivationFor(b.Type) && HalfSums(a) == HalfSums(b);

    private static bool HalfSums(WeightMatrix matrix) => matrix.Type is GgmlType.Q4_1 or GgmlType.Q5_1;

    /// <summary>
    /// Records the call (matrices[i] writes outputs[i]), splits every matrix's rows into chunks for the pool and quantizes
    /// the inputs once, as the matrices' type needs (they must <see cref="ShareInput"/>).
    /// </summary>
    public void Prepare(ReadOnlySpan<WeightMatrix> matrices, ReadOnlySpan<nint> outputs, KernelIsa isa, float* x, int tokens, LoomThreadPool pool)
    {
        var first = matrices[0];
        _cols = first.Cols;
        _tokens = tokens;
        _x = x;
        _kind = DotKernels.ActivationFor(first.Type);
        _halfSums = HalfSums(first);
        _partCount = matrices.Length;

        long bytes = 0;
        foreach (var matrix in matrices) bytes += matrix.Rows * matrix.RowBytes;
        int threads = pool.ThreadCount;
        bool parallel = threads > 1 && bytes * tokens >= MinParallelBytes;
        bool blockSums = false;
        _chunkCount = 0;
        for (int i = 0; i < matrices.Length; i++)
        {
            var matrix = matrices[i];
            ref var part = ref _parts[i];
            // interleaved K-quants have their own arithmetic; the portable path runs it on rebuilt rows
            part.Dot = matrix.Interleaved && isa == KernelIsa.Portable && InterleavedKQuantKernels.Supports(matrix.Type)
                ? InterleavedKQuantKernels.PortableDot(matrix.Type) : DotKernels.Select(matrix.Type, isa);
            part.DotFour = DotKernels.SelectFour(matrix.Type, isa);
            part.DotFourRows = null;
            part.DotGroupsRows = null;
            part.DotRows = null;
            part.Interleaved = matrix.Interleaved;
            part.ScaledInput = false;
            part.Type = matrix.Type;
            if (matrix.Interleaved)
            {
                // every call, one token included, runs row groups straight from the interleaved layout
                part.Tile = InterleavedKernels.Select(matrix.Type, isa, tokens);
                part.GroupTile = InterleavedKernels.SelectGroup(matrix.Type, isa, tokens);
                part.TileRows = InterleavedKernels.RowsPerCall(matrix.Type, isa, tokens);
            }
            else
            {
                part.Tile = tokens >= TileMinTokens ? DotKernels.SelectTile(matrix.Type, isa, tokens) : null;
                part.GroupTile = null;
                part.TileRows = DotKernels.TileRows(isa, tokens);
            }
            part.Weights = matrix.Data;
            part.RowBytes = matrix.RowBytes;
            part.Rows = matrix.Rows;
            part.Units = matrix.Cols / GgmlTypeInfo.BlockSize(matrix.Type);
            part.Y = (float*)outputs[i];
            // One token (decode): each thread first streams one contiguous share of nine tenths of the rows, which the
            // hardware prefetcher follows best (four interleaved chunks per thread measured 7–18% slower at 2 threads on
            // Zen 4); the last tenth goes in small chunks to whichever thread is ahead. With one share per thread and
            // nothing after it, each thread waited for the other at the end of most products (Zen 3, Llama-3.2-1B
            // Q8_0, two threads: 3.9% of all samples spinning or yielding, 2.0% with the small chunks). More tokens:
            // about four chunks per thread balance uneven progress. Whole row tiles keep the token loop efficient.
            const int chunksPerThread = 4;
            part.Shares = part.ShareRows = 0;
            int rest = matrix.Rows;
            int shareRows = matrix.Rows * 9 / 10 / threads / RowTile * RowTile;
            if (parallel && tokens == 1 && shareRows > 0)
            {
                part.Shares = threads;
                part.ShareRows = shareRows;
                rest -= threads * shareRows;
            }
            int target = (rest + threads * chunksPerThread - 1) / (threads * chunksPerThread);
            part.RowsPerChunk = !parallel ? Math.Max(1, matrix.Rows)
                : Math.Max(RowTile, (target + RowTile - 1) / RowTile * RowTile);
            part.FirstChunk = _chunkCount;
            _chunkCount += part.Shares + (rest + part.RowsPerChunk - 1) / part.RowsPerChunk;
            blockSums |= matrix.Type is GgmlType.Q4_0 or GgmlType.Q5_0 && isa != KernelIsa.Portable;
        }
        if (_kind == ActivationKind.Float)
        {
            PrepareScaledInput(matrices, isa);
            return;
        }

        long levels = (long)tokens * _cols;
        long scales = levels / (_kind == ActivationKind.Q8K ? 256 : 32);
        long sumsBytes = _kind == ActivationKind.Q8K ? levels / 16 * sizeof(short) : scales * sizeof(float);
        long qsBytes = Align(levels), dBytes = Align(scales * sizeof(float));
        long blockSumsBytes = blockSums ? Align(scales * sizeof(short)) : 0;
        Reserve(qsBytes + dBytes + Align(sumsBytes) + blockSumsBytes);
        _qs = (sbyte*)_base;
        _d = (float*)(_base + qsBytes);
        _s = (float*)(_base + qsBytes + dBytes);
        _bsums = (short*)(_base + qsBytes + dBytes);
        _blockSums = blockSums ? (short*)(_base + qsBytes + dBytes + Align(sumsBytes)) : null;

        if (threads > 1 && tokens > 1 && levels >= ParallelQuantizeValues)
        {
            _quantizeChunks = Math.Min(tokens, threads * 4);
            pool.Run(_quantize, _quantizeChunks);
        }
        else QuantizeTokens(0, tokens);
    }

    /// <summary>
    /// F16 matrices known finite: the inputs are scaled once (<see cref="FloatKernels.F16InputScale"/>) and those parts
    /// take the lighter kernels, which give the same bits. Inputs too large to scale keep the plain ones.
    /// </summary>
    private void PrepareScaledInput(ReadOnlySpan<WeightMatrix> matrices, KernelIsa isa)
    {
        _scaledX = null;
        if (isa == KernelIsa.Portable) return;
        bool any = false;
        foreach (var matrix in matrices) any |= matrix.FiniteHalves;
        if (!any) return;
        long values = (long)_tokens * _cols;
        if (values > int.MaxValue) return;
        var input = new ReadOnlySpan<float>(_x, (int)values);
        float largest = TensorPrimitives.MaxMagnitude(input);
        if (!(Math.Abs(largest) < FloatKernels.F16ScaledInputLimit)) return;
        Reserve(Align(values * sizeof(float)));
        _scaledX = (float*)_base;
        TensorPrimitives.Multiply(input, FloatKernels.F16InputScale, new Span<float>(_scaledX, (int)values));
        bool wide = isa == KernelIsa.Avx512;
        for (int i = 0; i < matrices.Length; i++)
        {
            if (!matrices[i].FiniteHalves) continue;
            _parts[i].ScaledInput = true;
            _parts[i].Dot = wide ? &FloatKernels.DotF16ScaledAvx512 : &FloatKernels.DotF16ScaledAvx2;
            _parts[i].DotFour = wide ? &FloatKernels.Dot4F16ScaledAvx512 : &FloatKernels.Dot4F16ScaledAvx2;
            if (_tokens >= 4 && _cols >= (wide ? 32 : FloatKernels.Dot4RowsMinColumnsAvx2))
                _parts[i].DotFourRows = wide ? &FloatKernels.Dot4RowsF16ScaledAvx512 : &FloatKernels.Dot4RowsF16ScaledAvx2;
            if (!wide && _tokens >= 4 * FloatKernels.WidenOnceMinGroups && _cols >= FloatKernels.Dot4RowsMinColumnsAvx2)
                _parts[i].DotGroupsRows = &FloatKernels.DotGroupsRowsF16ScaledAvx2;
            if (wide && _tokens >= 4 * FloatKernels.WidenOnceMinGroups512 && _cols >= 32)
                _parts[i].DotGroupsRows = &FloatKernels.DotGroupsRowsF16ScaledAvx512;
            if (_cols >= (wide ? FloatKernels.DotRowsMinColumns512 : FloatKernels.DotRowsMinColumns))
                _parts[i].DotRows = wide ? &FloatKernels.DotRowsF16ScaledAvx512 : &FloatKernels.DotRowsF16ScaledAvx2;
        }
    }

    private void QuantizeTokens(int start, int end)
    {
        for (int t = start; t < end; t++)
        {
            float* xt = _x + (long)t * _cols;
            if (_kind == ActivationKind.Q8K)
                ActivationQuantizer.QuantizeQ8K(xt, _cols, _qs + (long)t * _cols, _d + (long)t * (_cols / 256), _bsums + (long)t * (_cols / 16));
            else
                ActivationQuantizer.QuantizeQ8Blocks32(xt, _cols, _qs + (long)t * _cols, _d + (long)t * (_cols / 32), _s + (long)t * (_cols / 32), _halfSums);
            if (_blockSums != null)
                ActivationQuantizer.BlockSums32(_qs + (long)t * _cols, _cols, _blockSums + (long)t * (_cols / 32));
        }
    }

    /// <summary>Quantizes the tokens in contiguous ranges on the pool; each token's result is the same as a serial pass gives.</summary>
    private sealed class QuantizeWork(MatMulJob job) : IParallelWork
    {
        public void Execute(int chunk) =>
            job.QuantizeTokens((int)((long)chunk * job._tokens / job._quantizeChunks), (int)((long)(chunk + 1) * job._tokens / job._quantizeChunks));
    }

    public int ChunkCount => _chunkCount;

    public void Execute(int chunk)
    {
        int p = 0;
        while (p + 1 < _partCount && chunk >= _parts[p + 1].FirstChunk) p++;
        ref readonly var part = ref _parts[p];
        int index = chunk - part.FirstChunk;
        int rowStart = index < part.Shares ? index * part.ShareRows : part.Shares * part.ShareRows + (index - part.Shares) * part.RowsPerChunk;
        int rowEnd = Math.Min(part.Rows, rowStart + (index < part.Shares ? part.ShareRows : part.RowsPerChunk));
        int rows = part.Rows, units = part.Units;
        byte* weights = part.Weights;
        long rowBytes = part.RowBytes;
        float* y = part.Y;
        var dot = part.Dot;
        if (part.Interleaved && part.Tile == null)
        {
            // the portable path: each row rebuilt in GGML layout, then the one-token kernel
            byte* row = RowLaneKernels.Scratch(units);
            for (int r = rowStart; r < rowEnd; r++)
            {
                int lane = r % InterleavedKernels.GroupRows;
                InterleavedKernels.DeinterleaveRow(part.Type, weights + (r - lane) * rowBytes, units, lane, row);
                for (int t = 0; t < _tokens; t++)
                    y[(long)t * rows + r] = dot(row, units, Activation(t));
            }
            return;
        }
        if (part.Tile != null)
        {
            byte* scratch = _kind == ActivationKind.Q8K ? RowLaneKernels.ScratchBytes(InterleavedKQuantKernels.TileBytes(units)) : RowLaneKernels.Scratch(units);
            short* sums = _kind == ActivationKind.Q8K ? _bsums : _blockSums;
            int r = rowStart;
            for (; r + part.TileRows <= rowEnd; r += part.TileRows)
                part.Tile(weights + r * rowBytes, rowBytes, units, _qs, _d, sums, _tokens, y + r, rows, scratch);
            if (part.Interleaved)
            {
                // rows and chunk bounds are multiples of eight
                for (; r < rowEnd; r += InterleavedKernels.GroupRows)
                    part.GroupTile(weights + r * rowBytes, rowBytes, units, _qs, _d, sums, _tokens, y + r, rows, scratch);
                return;
            }
            // leftover rows: the one-token kernel computes the same per-row arithmetic
            for (int t = 0; t < _tokens && r < rowEnd; t++)
            {
                var activation = Activation(t);
                for (int row = r; row < rowEnd; row++)
                    y[(long)t * rows + row] = dot(weights + row * rowBytes, units, activation);
            }
            return;
        }
        ActivationRow* four = stackalloc ActivationRow[4];
        float* results = stackalloc float[4 * RowTile];
        var dotFour = part.DotFour;
        for (int tileStart = rowStart; tileStart < rowEnd; tileStart += RowTile)
        {
            int tileEnd = Math.Min(rowEnd, tileStart + RowTile);
            int t = 0;
            if (part.DotGroupsRows != null)
            {
                int groups = _tokens / 4;
                byte* widened = RowLaneKernels.ScratchBytes(FloatKernels.WidenOnceScratchBytes(tileEnd - tileStart, groups));
                part.DotGroupsRows(weights + tileStart * rowBytes, rowBytes, tileEnd - tileStart, units, _scaledX, groups, y + tileStart, rows, widened);
                t = 4 * groups;
            }
            if (dotFour != null)
            {
                for (; t + 4 <= _tokens; t += 4)
                {
                    for (int k = 0; k < 4; k++) four[k] = Activation(part, t + k);
                    if (part.DotFourRows != null)
                    {
                        part.DotFourRows(weights + tileStart * rowBytes, rowBytes, tileEnd - tileStart, units, four, results);
                        for (int r = tileStart; r < tileEnd; r++)
                            for (int k = 0; k < 4; k++) y[(long)(t + k) * rows + r] = results[4 * (r - tileStart) + k];
                        continue;
                    }
                    for (int r = tileStart; r < tileEnd; r++)
                    {
                        dotFour(weights + r * rowBytes, units, four, results);
                        for (int k = 0; k < 4; k++) y[(long)(t + k) * rows + r] = results[k];
                    }
                }
            }
            for (; t < _tokens; t++)
            {
                var activation = Activation(part, t);
                float* yt = y + (long)t * rows;
                if (part.DotRows != null)
                {
                    part.DotRows(weights + tileStart * rowBytes, rowBytes, tileEnd - tileStart, units, activation, yt + tileStart);
                    continue;
                }
                for (int r = tileStart; r < tileEnd; r++)
                    yt[r] = dot(weights + r * rowBytes, units, activation);
            }
        }
    }

    /// <summary>Token <paramref name="t"/>'s input as <paramref name="part"/>'s kernels take it (pre-scaled, for finite F16 weights).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private ActivationRow Activation(in Part part, int t) =>
        part.ScaledInput ? new ActivationRow(_scaledX + (long)t * _cols, null, null, null, null) : Activation(t);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private ActivationRow Activation(int t) => _kind switch
    {
        ActivationKind.Float => new ActivationRow(_x + (long)t * _cols, null, null, null, null),
        ActivationKind.Q8K => new ActivationRow(null, _qs + (long)t * _cols, _d + (long)t * (_cols / 256), null, _bsums + (long)t * (_cols / 16)),
        _ => new ActivationRow(null, _qs + (long)t * _cols, _d + (long)t * (_cols / 32), _s + (long)t * (_cols / 32),
            _blockSums == null ? null : _blockSums + (long)t * (_cols / 32)),
    };

    private static long Align(long bytes) => (bytes + 63) & ~63L;

    private void Reserve(long bytes)
    {
        if (bytes <= _buffer.Length - 64) return;
        if (bytes > Array.MaxLength - 64)
            throw new ArgumentOutOfRangeException(nameof(bytes), $"quantized activations would need {bytes} bytes");
        // Pinned (POH) so raw pointers stay valid; 64 spare bytes let the base be cache-line aligned.
        _buffer = GC.AllocateUninitializedArray<byte>((int)Math.Min(Array.MaxLength, Math.Max(bytes + 64, (long)_buffer.Length * 3 / 2)), pinned: true);
        nint start = (nint)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_buffer));
        _base = (byte*)((start + 63) & ~(nint)63);
    }
}
