namespace Loom.Models.Gguf;

/// <summary>Metadata value types as the GGUF specification numbers them.</summary>
public enum GgufValueType : uint
{
    UInt8 = 0,
    Int8 = 1,
    UInt16 = 2,
    Int16 = 3,
    UInt32 = 4,
    Int32 = 5,
    Float32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    UInt64 = 10,
    Int64 = 11,
    Float64 = 12,
}

/// <summary>
/// One metadata value. Scalars are boxed .NET primitives (byte, sbyte, ushort, short, uint, int, float, bool,
/// string, ulong, long, double); arrays are typed .NET arrays of those, with <see cref="ElementType"/> saying which.
/// </summary>
public sealed record GgufValue(GgufValueType Type, object Value, GgufValueType ElementType = GgufValueType.UInt8)
{
    public bool IsArray => Type == GgufValueType.Array;

    public static GgufValue Of(string s) => new(GgufValueType.String, s);
    public static GgufValue Of(uint v) => new(GgufValueType.UInt32, v);
    public static GgufValue Of(int v) => new(GgufValueType.Int32, v);
    public static GgufValue Of(float v) => new(GgufValueType.Float32, v);
    public static GgufValue Of(bool v) => new(GgufValueType.Bool, v);
    public static GgufValue Of(ulong v) => new(GgufValueType.UInt64, v);
    public static GgufValue Of(string[] v) => new(GgufValueType.Array, v, GgufValueType.String);
    public static GgufValue Of(float[] v) => new(GgufValueType.Array, v, GgufValueType.Float32);
    public static GgufValue Of(int[] v) => new(GgufValueType.Array, v, GgufValueType.Int32);

    public override string ToString() => Value switch
    {
        string s => s.Length > 80 ? $"\"{s[..77]}...\"" : $"\"{s}\"",
        System.Array a => $"[{ElementType} x {a.Length}]",
        _ => Convert.ToString(Value, System.Globalization.CultureInfo.InvariantCulture) ?? "",
    };
}
