using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Loom.Core.Threading;

namespace Loom.Core.Kernels;

/// <summary>
/// Per-calling-thread state of <see cref="WeightMatrix.Multiply(float*, float*, int)"/>: the quantized activations
/// (shared read-only with the pool's workers during the call) and the job object, both reused across calls.
/// </summary>
internal sealed unsafe class MatMulJob : IParallelWork
{
    [ThreadStatic] private static MatMulJob? t_current;

    public static MatMulJob ForCurrentThread => t_current ??= new MatMulJob();

    /// <summary>Rows a thread finishes for all tokens before moving on, so those weights are read from memory once.</summary>
    public const int RowTile = 16;

    private byte[] _buffer = [];
    private byte* _base;

    private delegate*<byte*, int, in ActivationRow, float> _dot;
    private delegate*<byte*, int, ActivationRow*, float*, void> _dotFour;
    private delegate*<byte*, long, int, sbyte*, float*, short*, int, float*, int, byte*, void> _tile;
    private byte* _weights;
    private long _rowBytes;
    private int _rows, _cols, _units, _tokens, _rowsPerChunk;
    private ActivationKind _kind;
    private float* _x;
    private float* _y;
    private sbyte* _qs;
    private float* _d;
    private float* _s;
    private short* _bsums;
    private short* _blockSums;

    /// <summary>From this many tokens on, types with a tile kernel transpose eight rows once and run every token over them.</summary>
    public const int TileMinTokens = 8;

    /// <summary>Quantizes the inputs as <paramref name="matrix"/>'s type needs and records the call's arguments.</summary>
    public void Prepare(WeightMatrix matrix, KernelIsa isa, float* x, float* y, int tokens, int rowsPerChunk)
    {
        _dot = DotKernels.Select(matrix.Type, isa);
        _dotFour = DotKernels.SelectFour(matrix.Type, isa);
        _tile = tokens >= TileMinTokens ? DotKernels.SelectTile(matrix.Type, isa) : null;
        _weights = matrix.Data;
        _rowBytes = matrix.RowBytes;
        _rows = matrix.Rows;
        _cols = matrix.Cols;
        _tokens = tokens;
        _x = x;
        _y = y;
        _rowsPerChunk = rowsPerChunk;
        _kind = DotKernels.ActivationFor(matrix.Type);
        _units = _cols / GgmlTypeInfo.BlockSize(matrix.Type);
        bool halfSums = matrix.Type is GgmlType.Q4_1 or GgmlType.Q5_1;
        if (_kind == ActivationKind.Float) return;

        long levels = (long)tokens * _cols;
        long scales = levels / (_kind == ActivationKind.Q8K ? 256 : 32);
        long sumsBytes = _kind == ActivationKind.Q8K ? levels / 16 * sizeof(short) : scales * sizeof(float);
        long qsBytes = Align(levels), dBytes = Align(scales * sizeof(float));
        bool blockSums = matrix.Type is GgmlType.Q4_0 or GgmlType.Q5_0 && isa != KernelIsa.Portable;
        long blockSumsBytes = blockSums ? Align(scales * sizeof(short)) : 0;
        Reserve(qsBytes + dBytes + Align(sumsBytes) + blockSumsBytes);
        _qs = (sbyte*)_base;
        _d = (float*)(_base + qsBytes);
        _s = (float*)(_base + qsBytes + dBytes);
        _bsums = (short*)(_base + qsBytes + dBytes);
        _blockSums = blockSums ? (short*)(_base + qsBytes + dBytes + Align(sumsBytes)) : null;

        for (int t = 0; t < tokens; t++)
        {
            float* xt = x + (long)t * _cols;
            if (_kind == ActivationKind.Q8K)
                ActivationQuantizer.QuantizeQ8K(xt, _cols, _qs + (long)t * _cols, _d + (long)t * (_cols / 256), _bsums + (long)t * (_cols / 16));
            else
                ActivationQuantizer.QuantizeQ8Blocks32(xt, _cols, _qs + (long)t * _cols, _d + (long)t * (_cols / 32), _s + (long)t * (_cols / 32), halfSums);
            if (_blockSums != null)
                ActivationQuantizer.BlockSums32(_qs + (long)t * _cols, _cols, _blockSums + (long)t * (_cols / 32));
        }
    }

    public int ChunkCount => (_rows + _rowsPerChunk - 1) / _rowsPerChunk;

    public void Execute(int chunk)
    {
        int rowStart = chunk * _rowsPerChunk;
        int rowEnd = Math.Min(_rows, rowStart + _rowsPerChunk);
        if (_tile != null)
        {
            byte* scratch = RowLaneKernels.Scratch(_units);
            int r = rowStart;
            for (; r + RowLaneKernels.TileRows <= rowEnd; r += RowLaneKernels.TileRows)
                _tile(_weights + r * _rowBytes, _rowBytes, _units, _qs, _d, _blockSums, _tokens, _y + r, _rows, scratch);
            // leftover rows: the one-token kernel computes the same per-row arithmetic
            for (int t = 0; t < _tokens && r < rowEnd; t++)
            {
                var activation = Activation(t);
                for (int row = r; row < rowEnd; row++)
                    _y[(long)t * _rows + row] = _dot(_weights + row * _rowBytes, _units, activation);
            }
            return;
        }
        ActivationRow* four = stackalloc ActivationRow[4];
        float* results = stackalloc float[4];
        for (int tileStart = rowStart; tileStart < rowEnd; tileStart += RowTile)
        {
            int tileEnd = Math.Min(rowEnd, tileStart + RowTile);
            int t = 0;
            if (_dotFour != null)
            {
                for (; t + 4 <= _tokens; t += 4)
                {
                    for (int k = 0; k < 4; k++) four[k] = Activation(t + k);
                    for (int r = tileStart; r < tileEnd; r++)
                    {
                        _dotFour(_weights + r * _rowBytes, _units, four, results);
                        for (int k = 0; k < 4; k++) _y[(long)(t + k) * _rows + r] = results[k];
                    }
                }
            }
            for (; t < _tokens; t++)
            {
                var activation = Activation(t);
                float* yt = _y + (long)t * _rows;
                for (int r = tileStart; r < tileEnd; r++)
                    yt[r] = _dot(_weights + r * _rowBytes, _units, activation);
            }
        }
    }

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
