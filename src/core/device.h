// Where an op runs. Dispatch in src/ops/*.cpp is a switch on this value.
#pragma once

namespace deltatron::core {

enum class Device { cpu, cuda };

}  // namespace deltatron::core
