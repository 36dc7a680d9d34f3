package audit

import "testing"

func TestDICOMAction(t *testing.T) {
	tests := []struct {
		id    string
		types []string
		ac    string
		want  string
	}{
		{"110114", []string{"110122"}, "E", ActionLogin},
		{"110114", []string{"110123"}, "E", ActionLogout},
		{"110114", []string{"110126"}, "E", ActionAuthenticate},
		{"110122", nil, "E", ActionLogin},
		{"110122", []string{"110123"}, "E", ActionLogout},
		{"110103", nil, "R", ActionPHIView},
		{"110103", nil, "", ActionPHIView},
		{"110103", nil, "C", ActionPHICreate},
		{"110110", nil, "R", ActionPHIView},
		{"110110", nil, "", ActionPatientRecord},
		{"110104", nil, "C", ActionDICOMStore},
		{"110104", nil, "R", ActionDICOMMove},
		{"110102", nil, "C", ActionDICOMStore},
		{"110105", nil, "D", ActionDICOMDelete},
		{"110106", nil, "R", ActionPHIExport},
		{"110112", nil, "E", ActionDICOMQuery},
		{"110113", []string{"110136"}, "E", ActionRBACChange},
		{"110113", []string{"110132"}, "E", ActionSecurityAlert},
		{"110113", []string{"110131"}, "E", ActionConfigChange},
		{"110113", []string{"110128"}, "E", ActionConfigChange},
		{"110100", []string{"110120"}, "E", ActionAppStart},
		{"110108", []string{"110125"}, "E", ActionNetworkDetach},
		{"110109", nil, "U", ActionOrderUpdate},
		{"999999", nil, "E", ActionDICOMOther},
	}
	for _, tt := range tests {
		if got := DICOMAction(tt.id, tt.types, tt.ac); got != tt.want {
			t.Errorf("DICOMAction(%s, %v, %q)=%s, want %s", tt.id, tt.types, tt.ac, got, tt.want)
		}
	}
	if got := DICOMActionCode("110112", ""); got != "E" {
		t.Errorf("default action code of 110112=%q, want E", got)
	}
	if got := DICOMActionCode("110112", "R"); got != "R" {
		t.Errorf("a given action code must be kept, got %q", got)
	}
}
