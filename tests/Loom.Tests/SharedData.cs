namespace Loom.Tests;

/// <summary>Locates ../shared (reference data beside the checkout) and fails clearly when it is missing.</summary>
public static class SharedData
{
    public static string Root { get; } = Find();

    public static string PathTo(string relative)
    {
        var path = System.IO.Path.Combine(Root, relative);
        if (!File.Exists(path) && !Directory.Exists(path))
            throw new FileNotFoundException($"reference file {relative} is missing from {Root}", path);
        return path;
    }

    public static string RepoRoot { get; } = FindRepo();

    private static string FindRepo()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(System.IO.Path.Combine(dir.FullName, "Loom.slnx"))) return dir.FullName;
        throw new DirectoryNotFoundException("cannot find the repository root (Loom.slnx) above " + AppContext.BaseDirectory);
    }

    private static string Find()
    {
        var env = Environment.GetEnvironmentVariable("LOOM_SHARED");
        if (!string.IsNullOrEmpty(env)) return env;
        var candidate = System.IO.Path.GetFullPath(System.IO.Path.Combine(FindRepo(), "..", "shared"));
        if (!Directory.Exists(candidate))
            throw new DirectoryNotFoundException($"the reference data folder ../shared is missing (looked for {candidate}); set LOOM_SHARED to its path");
        return candidate;
    }
}
