using System.Collections.Concurrent;
using LLama.Native;

namespace Loom.Tests.Conformance;

/// <summary>
/// Generated model files shared by the conformance tests of one run: each F32 model is written once, each quantized
/// variant is made once by llama.cpp's quantizer, and each reference model is loaded once. Everything lives in a
/// temporary folder that is deleted when the run ends.
/// </summary>
public sealed class ConformanceModels : IDisposable
{
    /// <summary>The llama.cpp quantization types the quantized conformance tests cover.</summary>
    public static readonly IReadOnlyDictionary<string, LLamaFtype> QuantTypes = new Dictionary<string, LLamaFtype>
    {
        ["Q8_0"] = LLamaFtype.MOSTLY_Q8_0,
        ["Q4_0"] = LLamaFtype.MOSTLY_Q4_0,
        ["Q4_K_M"] = LLamaFtype.MOSTLY_Q4_K_M,
        ["Q6_K"] = LLamaFtype.MOSTLY_Q6_K,
    };

    private readonly ConcurrentDictionary<string, Lazy<string>> _files = new();
    private readonly ConcurrentDictionary<string, Lazy<LlamaCppReference>> _references = new();

    public string Folder { get; } = Directory.CreateTempSubdirectory("loom-conformance-").FullName;

    /// <summary>Path of the F32 model for <paramref name="spec"/>, written on first use.</summary>
    public string F32(TestModelSpec spec) => Cached($"{spec.Name}-F32.gguf", path => TestModelFactory.Write(spec, path));

    /// <summary>Path of the model with every matrix stored as F16 (converted by Loom's writer), written on first use.</summary>
    public string F16(TestModelSpec spec) => Cached($"{spec.Name}-F16.gguf", path => TestModelFactory.Write(spec, path, f16Matrices: true));

    /// <summary>Path of <paramref name="spec"/> quantized by llama.cpp to <paramref name="quant"/> (a key of <see cref="QuantTypes"/>).</summary>
    public string Quantized(TestModelSpec spec, string quant)
    {
        var ftype = QuantTypes.TryGetValue(quant, out var t) ? t : throw new ArgumentException($"unknown quantization '{quant}'");
        string source = F32(spec);
        return Cached($"{spec.Name}-{quant}.gguf", path =>
        {
            // The quantizer writes in place; going through a temporary name keeps a failed run from leaving a partial file.
            var temp = path + ".partial";
            LlamaCppReference.Quantize(source, temp, ftype);
            File.Move(temp, path, overwrite: true);
        });
    }

    /// <summary>llama.cpp with <paramref name="path"/> loaded (one instance per file, kept for the run).</summary>
    public LlamaCppReference Reference(string path) =>
        _references.GetOrAdd(path, p => new Lazy<LlamaCppReference>(() => new LlamaCppReference(p))).Value;

    private string Cached(string name, Action<string> create) =>
        _files.GetOrAdd(name, n => new Lazy<string>(() =>
        {
            var path = Path.Combine(Folder, n);
            create(path);
            return path;
        })).Value;

    public void Dispose()
    {
        foreach (var reference in _references.Values.Where(r => r.IsValueCreated)) reference.Value.Dispose();
        try { Directory.Delete(Folder, recursive: true); } catch (IOException) { }
    }
}

[CollectionDefinition(Name)]
public sealed class ConformanceCollection : ICollectionFixture<ConformanceModels>
{
    public const string Name = "Conformance models";
}
