using System.Runtime.CompilerServices;

[assembly: InternalsVisibleTo("Loom.Tests")]
