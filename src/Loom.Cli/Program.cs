Console.WriteLine("loom");
