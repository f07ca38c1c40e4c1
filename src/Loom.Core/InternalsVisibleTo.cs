using System.Runtime.CompilerServices;

// Tests run each kernel instruction-set path side by side.
[assembly: InternalsVisibleTo("Loom.Tests")]

// The inference library reads F16 KV caches with the half conversions the F16 matrix kernels use.
[assembly: InternalsVisibleTo("Loom.Inference")]
