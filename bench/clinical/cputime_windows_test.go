package clinical

import "time"

// cpuTime is not measured on Windows (the benchmark's "cores" figure reads 0 there).
func cpuTime() time.Duration { return 0 }
