using System.Runtime.CompilerServices;

// Tests run each kernel instruction-set path side by side.
[assembly: InternalsVisibleTo("Loom.Tests")]
